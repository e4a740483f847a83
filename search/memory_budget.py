"""Predicted peak memory in the search: the latency table's memory model, a genome's prediction, and the figures.

A memory budget (``maedet-search run --budget-memory MB``) is evaluated with the memory model a profiled latency
table carries (``maedet-bench profile --memory``; :mod:`maedet.zoo.latency.memory`), or with ``--detector-budget``
its whole detectors' (``profile --memory --detector``; :mod:`maedet.zoo.latency.detector_memory`). The prediction
walks the network's tensors, so it is made only for candidates every cheaper limit admitted, and cached per genome.
"""

from __future__ import annotations

from typing import Any

from maedet.errors import MaeDetError
from maedet.zoo import Structure
from maedet.zoo.latency.detector_memory import DetectorMemoryModel, table_detector_memory_model
from maedet.zoo.latency.memory import MemoryModel, table_memory_model

from .errors import SearchError
from .latency import LatencyTarget
from .space import Genome, SearchSpace

__all__ = ["GenomeMemory", "MemoryModel", "memory_figures", "memory_model_of", "table_memory_figures"]

CACHE_LIMIT = 200_000


def memory_model_of(target: LatencyTarget | None, where: str, *, detector: bool = False) -> MemoryModel:
    """The memory model of the search's latency table (with ``detector``, its whole detectors'), or one sentence
    saying what is missing."""
    if target is None:
        raise SearchError("a memory budget needs a --latency-table whose memory model predicts it.")
    try:
        if detector:
            return table_detector_memory_model(target.predictor, where)
        return table_memory_model(target.predictor, where)
    except MaeDetError as exc:  # the table's own sentence, raised as the search's error
        raise SearchError(str(exc)) from None


class GenomeMemory:
    """Predicted peak MiB of a genome (decoded once, cached by genome)."""

    def __init__(self, space: SearchSpace, model: MemoryModel) -> None:
        self.space, self.model = space, model
        self._cache: dict[Genome, float] = {}

    def __call__(self, genome: Genome) -> float:
        mib = self._cache.get(genome)
        if mib is None:
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            mib = self._cache[genome] = self.model.predict_mib(self.space.decode(genome))
        return mib


def memory_figures(structure: Structure, model: MemoryModel) -> dict[str, Any]:
    """What ``score --json`` and best.json show: the predicted peak MiB and the target it is for (with the fixed
    glibc mmap threshold the model was measured with, when it was); a whole detector's under ``detector_*`` keys."""
    target: dict[str, Any] = {"batch": model.batch, "input_size": model.input_size, "runtime": "ort-cpu fp32 peak RSS"}
    if model.malloc_mmap_threshold is not None:
        target["malloc_mmap_threshold"] = model.malloc_mmap_threshold
    if isinstance(model, DetectorMemoryModel):
        target["detector"] = model.head.to_dict()
        return {"detector_memory_mib": round(model.predict_mib(structure), 3), "detector_memory_target": target}
    return {"memory_mib": round(model.predict_mib(structure), 3), "memory_target": target}


def table_memory_figures(structure: Structure, target: LatencyTarget | None) -> dict[str, Any]:
    """``memory_figures`` of each memory model the latency table carries (the backbone's, and the whole
    detector's when it has one), else nothing (score shows what it has)."""
    section = getattr(target.predictor, "memory", None) if target is not None else None
    if not section:
        return {}
    figures = memory_figures(structure, memory_model_of(target, "the latency table"))
    if section.get("detector"):
        figures |= memory_figures(structure, memory_model_of(target, "the latency table", detector=True))
    return figures
