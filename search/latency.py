"""Predicted latency in the search: which predictor, its identity, budgets given relative to it, and the hot path.

A latency budget is evaluated with a :class:`~maedet.zoo.latency.LatencyPredictor` (a profiled table or the
authors' V100 tables; the search knows only the protocol). Building a Structure for every candidate and summing its
convs costs more than the rest of a candidate's check, so :class:`GenomeLatency` predicts a genome stage by stage
from the predictor's per-piece prices (``piece_ms``), caching each stage's first block and repeated block by the
few integers they depend on. A stage repeats its identity block ``depth - 1`` times, so a depth mutation costs no
new lookup. Tests check that it agrees with ``predict_ms`` of the decoded Structure.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from maedet.zoo import Structure
from maedet.zoo.latency import LatencyPredictor, Piece, load_latency_table

from .errors import SearchError
from .space import Genome, SearchSpace

__all__ = ["GenomeLatency", "LatencyTarget", "latency_figures", "open_latency_target", "parse_latency_budget"]

LOGGER = logging.getLogger(__name__)
_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[xX×]\s*([A-Za-z0-9_\-]+)\s*$")


@dataclass(frozen=True, eq=False)
class LatencyTarget:
    """A predictor with the identity a checkpoint records (a resumed search must predict with the same table)."""

    predictor: LatencyPredictor
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.predictor.batch)

    @property
    def label(self) -> str:
        return str(self.predictor.label)

    @property
    def references(self) -> dict[str, float]:
        """Measured ms per batch of named networks (``resnet50``, ``maedet_m``, …); none for the V100 tables."""
        return dict(self.predictor.references)

    def predict_ms(self, structure: Structure) -> float:
        return float(self.predictor.predict_ms(structure))

    def genome_latency(self, space: SearchSpace) -> GenomeLatency:
        """The search's hot-path predictor of genomes for this target."""
        return GenomeLatency(space, self)

    def detector_parts(self, structure: Structure) -> dict[str, float] | None:
        """Backbone, neck + head, postprocess and total ms of the whole detector, where the table predicts them."""
        if not getattr(self.predictor, "has_detector", False):
            return None
        return self.predictor.detector_latency().predict(structure)  # type: ignore[attr-defined]

    @classmethod
    def of(cls, predictor: LatencyPredictor) -> LatencyTarget:
        """Wrap a predictor built in Python (a LatencyTable or a V100Predictor) with its identity."""
        return cls(predictor, predictor.identity)


def open_latency_target(name_or_path: str, batch: int | None = None, input_size: int | None = None) -> LatencyTarget:
    """A profiled table file or a built-in table (which needs ``batch`` and ``input_size``); a predictor whose
    accuracy missed its goal (or is unknown) is searched with, but with a warning (its predictions may be off)."""
    predictor = load_latency_table(name_or_path, batch=batch, input_size=input_size)
    warning = predictor.accuracy_warning(f"the latency table {str(name_or_path)!r}")
    if warning:
        LOGGER.warning("%s", warning)
    return LatencyTarget.of(predictor)


def parse_latency_budget(text: str, target: LatencyTarget) -> float:
    """A latency budget in ms per batch of the target: ``25.6``, or ``0.8xresnet101`` relative to a stored reference."""
    match = _RELATIVE.match(text)
    if match is None:
        try:
            value = float(text)
        except ValueError:
            raise SearchError(
                f"a latency budget is ms per batch (e.g. 25.6) or a multiple of a reference (e.g. 1.0xresnet50), "
                f"got {text!r}."
            ) from None
    else:
        factor, name = float(match.group(1)), match.group(2).lower()
        refs = target.references
        if not refs:
            raise SearchError(
                f"the latency table {target.identity.get('table')!r} stores no measured reference latencies, so "
                f"{text!r} cannot be resolved; give the budget in ms per batch."
            )
        if name not in refs:
            hint = "; a whole detector's reference needs --detector-budget" if name.endswith("_gfl") else ""
            raise SearchError(
                f"the latency table has no reference {name!r}; it stores {', '.join(sorted(refs))}{hint}."
            )
        value = factor * refs[name]
    if not (math.isfinite(value) and value > 0):
        raise SearchError(f"impossible budget: the latency must be a positive number of ms, got {text!r}.")
    return value


def latency_figures(structure: Structure, target: LatencyTarget) -> dict[str, Any]:
    """The report fields: ms per batch and per image (None where the predictor has no figure), label, target; and
    the whole detector's parts (``detector_latency``) where the table predicts detectors."""
    ms = target.predict_ms(structure)
    finite = math.isfinite(ms)
    figures = {
        "latency_ms": ms if finite else None,
        "latency_ms_per_image": ms / target.batch if finite else None,
        "latency_label": target.label,
        "latency_target": dict(target.predictor.target),
    }
    parts = target.detector_parts(structure)
    return figures | ({"detector_latency": parts} if parts is not None else {})


class GenomeLatency:
    """Predicted ms per batch of a genome, stage by stage, cached (the search's hot path)."""

    def __init__(self, space: SearchSpace, target: LatencyTarget) -> None:
        self.space = space
        self.target = target
        predictor = self._predictor = target.predictor
        self._stems: dict[int, float] = {}
        self._blocks: dict[tuple[int, ...], tuple[float, float]] = {}
        sizes = [predictor.input_size]  # input feature size of the stem, then of every stage
        size = predictor.out_size(predictor.input_size, space.stem_stride)
        for stride in space.strides:
            sizes.append(size)
            size = predictor.out_size(size, stride)
        self._sizes = sizes

    def __call__(self, genome: Genome) -> float:
        stem_ms = self._stems.get(genome[0])
        if stem_ms is None:
            stem_ms = self._stems[genome[0]] = self._stem_ms(genome[0])
        total = stem_ms
        prev = genome[0]
        depths = 0
        blocks, strides, sizes = self._blocks, self.space.strides, self._sizes
        for j in range(len(strides)):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            key = (j, prev, out, k, btn)
            pair = blocks.get(key)
            if pair is None:
                pair = blocks[key] = self._block_ms(prev, out, k, btn, strides[j], sizes[j + 1])
            total += pair[0] if depth == 1 else pair[0] + (depth - 1) * pair[1]
            depths += depth
            prev = out
        convs = 1 + 3 * depths + len(strides)  # maedet.zoo.latency.conv_count of the decoded structure
        return self._predictor.network_ms(total, convs)

    def _stem_ms(self, out: int) -> float:
        sp = self.space
        return self._predictor.piece_ms(Piece("stem", sp.stem_in, out, sp.stem_kernel, sp.stem_stride, self._sizes[0]))

    def _block_ms(self, prev: int, out: int, k: int, btn: int, stride: int, size: int) -> tuple[float, float]:
        """ms of a stage's first block and of each of its identity blocks."""
        piece_ms = self._predictor.piece_ms
        first = piece_ms(Piece("first", prev, out, k, stride, size, btn))
        rest = piece_ms(Piece("rest", out, out, k, 1, self._predictor.out_size(size, stride), btn))
        return first, rest
