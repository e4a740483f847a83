"""Search budgets (official FLOPs at a resolution, params, conv layers, GMACs@224, predicted latency) and the
published presets.

The latency limit is a number (ms per batch of a table's target); the predictor that evaluates it is held by the
search (``SearchSettings.latency``), not by the budget, so a budget stays plain data in checkpoints and reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from maedet.zoo import Structure, builtin_structure, conv_layers, gmacs, official_flops, param_count

from .errors import SearchError
from .evaluator import GenomeEvaluator
from .space import Genome

if TYPE_CHECKING:
    from collections.abc import Callable

    from maedet.zoo.latency.memory import MemoryModel

    from .latency import LatencyTarget

__all__ = ["PRESETS", "Budget", "preset_budget"]

PRESETS = {"maedet-s": "maedet_s", "maedet-m": "maedet_m", "maedet-l": "maedet_l"}


@dataclass(frozen=True)
class Budget:
    """Upper limits a candidate must respect; None means unlimited. ``flops`` are official FLOPs at ``resolution``;
    ``latency_ms`` is predicted ms per batch of the search's latency table."""

    flops: int | None = None
    params: int | None = None
    layers: int | None = None
    gmacs: float | None = None
    resolution: int = 480
    latency_ms: float | None = None
    memory_mib: float | None = None  # predicted peak MiB on the latency table's runtime (its memory model)

    def __post_init__(self) -> None:
        for name in ("flops", "params", "layers", "gmacs", "latency_ms", "memory_mib"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SearchError(f"impossible budget: {name} must be positive, got {value}.")
        if self.resolution < 32:
            raise SearchError(f"impossible budget: the resolution must be at least 32 px, got {self.resolution}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        return cls(**data)

    def violations(
        self, structure: Structure, latency: LatencyTarget | None = None, memory: MemoryModel | None = None
    ) -> list[str]:
        """Which limits ``structure`` exceeds, as readable phrases (computed with the zoo's cost functions and,
        for the latency limit, the ``latency`` table's own prediction)."""
        over = []
        if self.flops is not None and (v := official_flops(structure, self.resolution)) > self.flops:
            over.append(f"official FLOPs@{self.resolution} {v:,} > {self.flops:,}")
        if self.params is not None and (v := param_count(structure)) > self.params:
            over.append(f"params {v:,} > {self.params:,}")
        if self.layers is not None and (v := conv_layers(structure)) > self.layers:
            over.append(f"conv layers {v} > {self.layers}")
        if self.gmacs is not None and (g := gmacs(structure, 224)) > self.gmacs:
            over.append(f"GMACs@224 {g:.3f} > {self.gmacs}")
        if self.latency_ms is not None:
            if latency is None:
                raise SearchError("a latency budget needs a latency table to predict with.")
            if not (ms := latency.predict_ms(structure)) <= self.latency_ms:
                over.append(f"predicted latency {ms:.4g} ms > {self.latency_ms:.4g} ms per batch")
        return over + self._memory_violations(structure, memory)

    def _memory_violations(self, structure: Structure, memory: MemoryModel | None) -> list[str]:
        if self.memory_mib is None:
            return []
        if memory is None:
            raise SearchError("a memory budget needs a latency table with a memory model to predict with.")
        if not (mib := memory.predict_mib(structure)) <= self.memory_mib:
            return [f"predicted {memory.what} {mib:.4g} MiB > {self.memory_mib:.4g} MiB"]
        return []

    def admits(
        self,
        evaluator: GenomeEvaluator,
        genome: Genome,
        latency: Callable[[Genome], float] | None = None,
        memory: Callable[[Genome], float] | None = None,
    ) -> bool:
        """The hot-path check: cheapest limits first, each computed only when set; the predicted latency last."""
        if self.layers is not None and evaluator.layers(genome) > self.layers:
            return False
        if self.flops is not None and evaluator.macs_and_flops(genome, self.resolution)[1] > self.flops:
            return False
        if self.params is not None and evaluator.params(genome) > self.params:
            return False
        if self.gmacs is not None and evaluator.macs_and_flops(genome, 224)[0] / 1e9 > self.gmacs:
            return False
        if self.latency_ms is not None:
            if latency is None:
                raise SearchError("a latency budget needs a latency table to predict with.")
            if not latency(genome) <= self.latency_ms:
                return False
        if self.memory_mib is None:
            return True
        if memory is None:
            raise SearchError("a memory budget needs a latency table with a memory model to predict with.")
        return memory(genome) <= self.memory_mib


def preset_budget(preset: str, resolution: int = 480) -> Budget:
    """The budget of a published structure: its official FLOPs at ``resolution`` and its conv layers."""
    if preset not in PRESETS:
        raise SearchError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    published = builtin_structure(PRESETS[preset])
    return Budget(flops=official_flops(published, resolution), layers=conv_layers(published), resolution=resolution)
