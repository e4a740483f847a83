"""Predicted latency in the search: which table, its identity, budgets given relative to it, and the hot path.

A latency budget is evaluated with a predictor from ``maedet.zoo.latency`` (a profiled table or the authors' V100
tables). Building a Structure for every candidate and summing its convs costs more than the rest of a candidate's
check, so :class:`GenomeLatency` predicts a genome stage by stage from the predictor's own per-piece (profiled
table) or per-conv (V100) predictions, caching each stage's first block and repeated block by the few integers
they depend on. A stage repeats its identity block ``depth - 1`` times, so a depth mutation costs no new lookup.
Tests check that it agrees with ``predict_ms`` of the decoded Structure; any other predictor falls back to exactly
that, cached per genome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from maedet.zoo import Structure
from maedet.zoo.latency import LatencyTable, Piece, load_latency_table
from maedet.zoo.latency_goal import meets_goal, missed_goal_sentence

from .errors import SearchError
from .space import Genome, SearchSpace

__all__ = ["GenomeLatency", "LatencyTarget", "latency_figures", "open_latency_target", "parse_latency_budget"]

LOGGER = logging.getLogger(__name__)
_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*[xX×]\s*([A-Za-z0-9_\-]+)\s*$")


@dataclass(frozen=True, eq=False)
class LatencyTarget:
    """A predictor with the identity a checkpoint records (a resumed search must predict with the same table)."""

    predictor: Any
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.predictor.target["batch"])

    @property
    def label(self) -> str:
        return str(self.predictor.label)

    @property
    def references(self) -> dict[str, float]:
        """Measured ms per batch of named networks (``resnet50``, ``maedet_m``, …); none for the V100 tables."""
        return dict(getattr(self.predictor, "references", None) or {})

    def predict_ms(self, structure: Structure) -> float:
        return float(self.predictor.predict_ms(structure))

    @classmethod
    def of(cls, predictor: Any) -> LatencyTarget:
        """Wrap a predictor built in Python (a LatencyTable or a V100Predictor) with its identity."""
        return cls(predictor, table_identity(predictor))


def _is_v100(predictor: Any) -> bool:
    """Without importing the V100 module (scipy): if it is not loaded, nothing can be one of its predictors."""
    module = sys.modules.get("maedet.zoo.latency_v100")
    return module is not None and isinstance(predictor, module.V100Predictor)


def table_identity(predictor: Any) -> dict[str, Any]:
    """What names a table: a V100 name with its batch and input size, or the sha256 of a profiled table's content."""
    target = dict(predictor.target)
    if _is_v100(predictor):
        return {"table": target["name"], "batch": target["batch"], "input_size": target["input_size"]}
    if isinstance(predictor, LatencyTable):
        canonical = json.dumps(predictor.to_dict(), sort_keys=True, separators=(",", ":"))
        return {"table": "profiled", "sha256": hashlib.sha256(canonical.encode()).hexdigest(), "target": target}
    return {"table": type(predictor).__name__, "target": target}


def open_latency_target(name_or_path: str, batch: int | None = None, input_size: int | None = None) -> LatencyTarget:
    """A profiled table file or a built-in V100 table (which needs ``batch`` and ``input_size``); a profiled table
    that missed its validation goal is searched with, but with a warning (its predictions may be off)."""
    predictor = load_latency_table(name_or_path, batch=batch, input_size=input_size)
    if isinstance(predictor, LatencyTable):
        warn_about_accuracy(predictor, f"the latency table {str(name_or_path)!r}")
    return LatencyTarget.of(predictor)


def warn_about_accuracy(table: LatencyTable, where: str) -> None:
    """A warning for a table whose validation missed the goal; a note for one whose accuracy is unknown."""
    met = meets_goal(table.validation)
    if met is False:
        LOGGER.warning("%s", missed_goal_sentence(where, table.target, table.validation))
    elif met is None:
        LOGGER.warning("%s holds no validation figures, so how well it predicts is unknown.", where)


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
            raise SearchError(f"the latency table has no reference {name!r}; it stores {', '.join(sorted(refs))}.")
        value = factor * refs[name]
    if not (math.isfinite(value) and value > 0):
        raise SearchError(f"impossible budget: the latency must be a positive number of ms, got {text!r}.")
    return value


def latency_figures(structure: Structure, target: LatencyTarget) -> dict[str, Any]:
    """The report fields: ms per batch and per image (None where the predictor has no figure), label, target."""
    ms = target.predict_ms(structure)
    finite = math.isfinite(ms)
    return {
        "latency_ms": ms if finite else None,
        "latency_ms_per_image": ms / target.batch if finite else None,
        "latency_label": target.label,
        "latency_target": dict(target.predictor.target),
    }


class GenomeLatency:
    """Predicted ms per batch of a genome, stage by stage, cached (the search's hot path)."""

    def __init__(self, space: SearchSpace, target: LatencyTarget) -> None:
        self.space = space
        self.target = target
        predictor = target.predictor
        self._stems: dict[int, float] = {}
        self._blocks: dict[tuple[int, ...], tuple[float, float]] = {}
        self._genomes: dict[Genome, float] = {}
        if _is_v100(predictor):
            self._sizes = self._stage_sizes(predictor.input_size, lambda size, stride: size // stride)
            self._stem_ms, self._block_ms = self._v100_stem, self._v100_blocks
            self._scale, self._per_conv, self._offset = 1.0, 0.0, 0.0
        elif isinstance(predictor, LatencyTable):
            self._sizes = self._stage_sizes(predictor.input_size, lambda size, stride: (size - 1) // stride + 1)
            self._stem_ms, self._block_ms = self._table_stem, self._table_blocks
            self._scale = float(predictor.calibration.get("scale", 1.0))
            self._per_conv = float(predictor.calibration.get("per_conv_ms", 0.0))
            self._offset = float(predictor.calibration.get("offset_ms", 0.0))
        else:
            self._sizes = None

    def _stage_sizes(self, input_size: int, shrink: Any) -> list[int]:
        """Input feature size of the stem, then of every stage (each predictor's own rounding)."""
        sizes = [input_size]
        size = shrink(input_size, self.space.stem_stride)
        for stride in self.space.strides:
            sizes.append(size)
            size = shrink(size, stride)
        return sizes

    def __call__(self, genome: Genome) -> float:
        if self._sizes is None:
            hit = self._genomes.get(genome)
            if hit is None:
                hit = self._genomes[genome] = self.target.predict_ms(self.space.decode(genome))
            return hit
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
        return self._scale * total + self._per_conv * convs + self._offset

    # ---------------------------------------------------------------- the authors' V100 conv list, per stage
    def _v100_stem(self, out: int) -> float:
        sp = self.space
        return self.target.predictor.predict_conv_ms(
            ("Regular", sp.stem_stride, 0, sp.stem_kernel, sp.stem_in, self._sizes[0], out)
        )

    def _v100_blocks(self, prev: int, out: int, k: int, btn: int, stride: int, size: int) -> tuple[float, float]:
        conv = self.target.predictor.predict_conv_ms
        out_size = size // stride
        first = (
            conv(("Regular", 1, 0, 1, prev, size, btn))
            + conv(("Regular", stride, 0, k, btn, size, btn))
            + conv(("Regular", 1, 1, 1, btn, out_size, out))
            + conv(("Regular", 1, 0, 1, prev, out_size, out))
        )
        rest = (
            conv(("Regular", 1, 0, 1, out, out_size, btn))
            + conv(("Regular", 1, 0, k, btn, out_size, btn))
            + conv(("Regular", 1, 1, 1, btn, out_size, out))
        )
        return first, rest

    # ---------------------------------------------------------------- a profiled table's pieces, per stage
    def _table_stem(self, out: int) -> float:
        sp = self.space
        piece = Piece("stem", sp.stem_in, out, sp.stem_kernel, sp.stem_stride, self._sizes[0])
        return self.target.predictor.piece_ms(piece)

    def _table_blocks(self, prev: int, out: int, k: int, btn: int, stride: int, size: int) -> tuple[float, float]:
        piece_ms = self.target.predictor.piece_ms
        first = piece_ms(Piece("first", prev, out, k, stride, size, btn))
        rest = piece_ms(Piece("rest", out, out, k, 1, (size - 1) // stride + 1, btn))
        return first, rest
