"""Everything a run was asked to do, as data: saved in ``--out`` so that ``--resume DIR`` needs nothing else."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError

from .model import ModelSpec
from .recipe import RECIPES, Recipe, recipe_with

__all__ = ["SETTINGS_NAME", "TrainSettings", "read_settings"]

SETTINGS_NAME = "settings.json"
AMP_CHOICES = ("bf16", "fp16")


@dataclass
class TrainSettings:
    """The data, the detector, the recipe and the run's own switches."""

    data: str
    images: str
    out: str
    val_data: str | None = None
    val_images: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    recipe: Recipe = field(default_factory=lambda: RECIPES["maedet-6x"])
    num_classes: int | None = None  # None: the data file's category count
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: str | None = None
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.9998
    channels_last: bool = True  # NHWC activations: convolutions train faster (CPU and CUDA alike)
    max_minutes: float | None = None
    push_to_hub: str | None = None

    def check(self) -> None:
        """Bad numbers and impossible switches, one sentence each."""
        if self.amp is not None and self.amp not in AMP_CHOICES:
            raise MaeDetError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {self.amp!r}.")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise MaeDetError(f"--clip-grad must be a positive norm, got {self.clip_grad}.")
        if not 0 < self.ema_decay < 1:
            raise MaeDetError(f"--ema-decay must be between 0 and 1, got {self.ema_decay}.")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise MaeDetError(f"--max-minutes must be positive, got {self.max_minutes}.")
        if self.workers < 0:
            raise MaeDetError(f"--workers must be 0 or more, got {self.workers}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise MaeDetError(f"--num-classes must be 1 or more, got {self.num_classes}.")
        if (self.val_data is None) != (self.val_images is None):
            raise MaeDetError("--val-data and --val-images go together: give both or neither.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _from_dict(data: dict[str, Any]) -> TrainSettings:
    model = ModelSpec(**data.pop("model"))
    recipe_data = dict(data.pop("recipe"))
    name = recipe_data.pop("name")
    return TrainSettings(model=model, recipe=recipe_with(name, **recipe_data), **data)


def read_settings(out: Path) -> TrainSettings:
    """The settings a run saved in its folder (for ``--resume``)."""
    path = out / SETTINGS_NAME
    if not path.is_file():
        raise MaeDetError(f"{str(out)!r} holds no maedet-train run to resume (no {SETTINGS_NAME}).")
    try:
        return _from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as exc:
        raise MaeDetError(f"cannot read the run settings {str(path)!r} ({type(exc).__name__}: {exc}).") from None
