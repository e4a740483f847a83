"""Search budgets (official FLOPs at a resolution, params, conv layers, GMACs@224) and the published presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from maedet.zoo import Structure, builtin_structure, conv_layers, gmacs, official_flops, param_count

from .errors import SearchError
from .evaluator import GenomeEvaluator
from .space import Genome

__all__ = ["PRESETS", "Budget", "preset_budget"]

PRESETS = {"maedet-s": "maedet_s", "maedet-m": "maedet_m", "maedet-l": "maedet_l"}


@dataclass(frozen=True)
class Budget:
    """Upper limits a candidate must respect; None means unlimited. ``flops`` are official FLOPs at ``resolution``."""

    flops: int | None = None
    params: int | None = None
    layers: int | None = None
    gmacs: float | None = None
    resolution: int = 480

    def __post_init__(self) -> None:
        for name in ("flops", "params", "layers", "gmacs"):
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

    def violations(self, structure: Structure) -> list[str]:
        """Which limits ``structure`` exceeds, as readable phrases (computed with the zoo's cost functions)."""
        over = []
        if self.flops is not None and (v := official_flops(structure, self.resolution)) > self.flops:
            over.append(f"official FLOPs@{self.resolution} {v:,} > {self.flops:,}")
        if self.params is not None and (v := param_count(structure)) > self.params:
            over.append(f"params {v:,} > {self.params:,}")
        if self.layers is not None and (v := conv_layers(structure)) > self.layers:
            over.append(f"conv layers {v} > {self.layers}")
        if self.gmacs is not None and (g := gmacs(structure, 224)) > self.gmacs:
            over.append(f"GMACs@224 {g:.3f} > {self.gmacs}")
        return over

    def admits(self, evaluator: GenomeEvaluator, genome: Genome) -> bool:
        """The hot-path check: cheapest limits first, each computed only when set."""
        if self.layers is not None and evaluator.layers(genome) > self.layers:
            return False
        if self.flops is not None and evaluator.macs_and_flops(genome, self.resolution)[1] > self.flops:
            return False
        if self.params is not None and evaluator.params(genome) > self.params:
            return False
        return not (self.gmacs is not None and evaluator.macs_and_flops(genome, 224)[0] / 1e9 > self.gmacs)


def preset_budget(preset: str, resolution: int = 480) -> Budget:
    """The budget of a published structure: its official FLOPs at ``resolution`` and its conv layers."""
    if preset not in PRESETS:
        raise SearchError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    published = builtin_structure(PRESETS[preset])
    return Budget(flops=official_flops(published, resolution), layers=conv_layers(published), resolution=resolution)
