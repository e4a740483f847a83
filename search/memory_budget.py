"""Predicted peak memory in the search: the latency table's memory model, a genome's prediction, and the figures.

A memory budget (``maedet-search run --budget-memory MB``) is evaluated with the memory model a profiled latency
table carries (``maedet-bench profile --memory``; :mod:`maedet.zoo.latency.memory`). The prediction walks the
network's tensors, so it is made only for candidates every cheaper limit admitted, and cached per genome.
"""

from __future__ import annotations

from typing import Any

from maedet.errors import MaeDetError
from maedet.zoo import Structure
from maedet.zoo.latency.memory import MemoryModel, table_memory_model

from .errors import SearchError
from .latency import LatencyTarget
from .space import Genome, SearchSpace

__all__ = ["GenomeMemory", "MemoryModel", "memory_figures", "memory_model_of", "table_memory_figures"]

CACHE_LIMIT = 200_000


def memory_model_of(target: LatencyTarget | None, where: str) -> MemoryModel:
    """The memory model of the search's latency table, or one sentence saying what is missing."""
    if target is None:
        raise SearchError("a memory budget needs a --latency-table whose memory model predicts it.")
    try:
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
    glibc mmap threshold the model was measured with, when it was)."""
    target: dict[str, Any] = {"batch": model.batch, "input_size": model.input_size, "runtime": "ort-cpu fp32 peak RSS"}
    if model.malloc_mmap_threshold is not None:
        target["malloc_mmap_threshold"] = model.malloc_mmap_threshold
    return {"memory_mib": round(model.predict_mib(structure), 3), "memory_target": target}


def table_memory_figures(structure: Structure, target: LatencyTarget | None) -> dict[str, Any]:
    """``memory_figures`` when the latency table carries a memory model, else nothing (score shows what it has)."""
    if target is None or not getattr(target.predictor, "memory", None):
        return {}
    return memory_figures(structure, memory_model_of(target, "the latency table"))
