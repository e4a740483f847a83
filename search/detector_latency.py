"""Budgets for a whole detector: the searched backbone priced with the FPN, the GFocalV2 head and the postprocess.

``maedet-search run --budget-latency 1.0xresnet50_gfl --detector-budget`` searches a backbone whose *detector*
(backbone + FPN + GFocalV2 head + decoding and NMS at the table's size) fits the budget, as predicted by a table
profiled with ``maedet-bench profile --detector`` (zoo/latency/detector.py); relative budgets resolve against the
whole detectors it measured (``resnet50_gfl``, …). In the hot path the neck and head cost depends only on the
backbone's C3..C5 widths, so it is cached per width triple beside the backbone's stage-by-stage price.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maedet.zoo import Structure
from maedet.zoo.latency.detector import DetectorLatency, genome_widths

from .errors import SearchError
from .latency import GenomeLatency, LatencyTarget
from .space import Genome, SearchSpace

__all__ = ["DetectorGenomeLatency", "DetectorLatencyTarget", "detector_target"]


@dataclass(frozen=True, eq=False)
class DetectorLatencyTarget(LatencyTarget):
    """A latency target whose every figure is the end-to-end detector's (the backbone's is one of its parts)."""

    detector: DetectorLatency | None = None

    @property
    def model(self) -> DetectorLatency:
        assert self.detector is not None
        return self.detector

    @property
    def label(self) -> str:
        return f"end-to-end detector (FPN {self.model.head.fpn_channels} + GFocalV2 head + NMS), {self.predictor.label}"

    @property
    def references(self) -> dict[str, float]:
        """Whole detectors' ms per batch for relative budgets (``resnet50_gfl``, ``maedet_m_gfl``, …), the ResNet
        ones priced like the candidates (:meth:`DetectorLatency.priced_references`)."""
        return self.model.priced_references()

    def predict_ms(self, structure: Structure) -> float:
        return self.model.predict(structure)["total_ms"]

    def genome_latency(self, space: SearchSpace) -> GenomeLatency:
        return DetectorGenomeLatency(space, self)


class DetectorGenomeLatency(GenomeLatency):
    """The backbone's hot-path price plus the neck, head and postprocess of its C3..C5 widths."""

    def __init__(self, space: SearchSpace, target: DetectorLatencyTarget) -> None:
        super().__init__(space, target)
        self._model = target.model

    def __call__(self, genome: Genome) -> float:
        widths = genome_widths(genome, self.space.stem_stride, self.space.strides)
        return super().__call__(genome) + self._model.head_and_post_ms(widths)


def detector_target(target: LatencyTarget, table: str) -> DetectorLatencyTarget:
    """``target`` priced as whole detectors; a table that cannot (the V100 tables, a table profiled without
    ``--detector``) is refused in one sentence."""
    latency = getattr(target.predictor, "detector_latency", None)
    if latency is None:
        raise SearchError(
            f"the latency table {table!r} predicts backbones only, so --detector-budget cannot be priced with it; "
            "profile a target with maedet-bench profile --detector."
        )
    model = latency()
    identity: dict[str, Any] = {**target.identity, "detector": model.head.to_dict()}
    return DetectorLatencyTarget(target.predictor, identity, model)
