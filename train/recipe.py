"""Training recipes: every number of a run in one frozen record, with the authors' GFocalV2 6× preset and a CPU demo.

``maedet-6x`` is the MAE-DET authors' COCO recipe (docs/training.md, section "Training"); ``demo`` is small enough
to train a searched backbone on the synthetic shapes set on a laptop CPU. Every field is also a command-line flag.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from maedet.errors import MaeDetError

__all__ = ["RECIPES", "Recipe", "recipe_with", "scaled_lr"]

REFERENCE_BATCH = 16  # the authors' global batch (8 GPUs × 2 images) for which lr is given


@dataclass(frozen=True)
class Recipe:
    """What a training run does, independent of the data and the detector's backbone."""

    name: str
    lr: float = 0.02  # for a global batch of 16 images; scaled linearly with the real global batch
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 7330
    warmup_ratio: float = 0.1
    steps: tuple[int, ...] = (65, 71)  # epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    epochs: int = 73
    short_range: tuple[int, int] = (480, 960)  # the train short side is drawn uniformly in this range
    long_max: int = 1333
    flip: float = 0.5
    batch_per_process: int = 2
    sync_bn: bool = True
    eval_scale: tuple[int, int] = (1333, 800)  # (long side limit, short side limit) at evaluation
    eval_every: int = 1
    fpn_channels: int | None = None  # None: the detector's own width
    stacked_convs: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


RECIPES: dict[str, Recipe] = {
    "maedet-6x": Recipe("maedet-6x"),
    "demo": Recipe(
        "demo",
        lr=0.16,
        warmup_iters=100,
        steps=(9, 10),
        epochs=11,
        short_range=(128, 160),
        long_max=160,
        batch_per_process=8,
        eval_scale=(160, 160),
        eval_every=3,
        fpn_channels=64,
        stacked_convs=2,
    ),
}


def scaled_lr(recipe: Recipe, global_batch: int) -> float:
    """The linear scaling rule: lr is given for 16 images per step and grows with the global batch."""
    return recipe.lr * global_batch / REFERENCE_BATCH


def _check(recipe: Recipe) -> None:
    """Numbers that cannot describe a run, in one sentence each."""
    checks = [
        (recipe.lr > 0, f"lr must be positive, got {recipe.lr}"),
        (0 <= recipe.momentum < 1, f"momentum must be in [0, 1), got {recipe.momentum}"),
        (recipe.weight_decay >= 0, f"weight decay must be 0 or more, got {recipe.weight_decay}"),
        (recipe.warmup_iters >= 0, f"warm-up iterations must be 0 or more, got {recipe.warmup_iters}"),
        (0 < recipe.warmup_ratio <= 1, f"the warm-up ratio must be in (0, 1], got {recipe.warmup_ratio}"),
        (0 < recipe.gamma <= 1, f"gamma must be in (0, 1], got {recipe.gamma}"),
        (recipe.epochs >= 1, f"epochs must be 1 or more, got {recipe.epochs}"),
        (all(s > 0 for s in recipe.steps), f"lr steps must be positive epochs, got {list(recipe.steps)}"),
        (list(recipe.steps) == sorted(recipe.steps), f"lr steps must increase, got {list(recipe.steps)}"),
        (32 <= recipe.short_range[0] <= recipe.short_range[1], f"the short-side range must be 32 ≤ low ≤ high, got "
         f"{list(recipe.short_range)}"),
        (recipe.long_max >= recipe.short_range[1], f"the long-side limit {recipe.long_max} must be at least the "
         f"largest short side {recipe.short_range[1]}"),
        (0 <= recipe.flip <= 1, f"the flip probability must be in [0, 1], got {recipe.flip}"),
        (recipe.batch_per_process >= 1, f"the batch per process must be 1 or more, got {recipe.batch_per_process}"),
        (min(recipe.eval_scale) >= 32, f"the evaluation scale must be at least 32, got {list(recipe.eval_scale)}"),
        (recipe.eval_every >= 1, f"evaluation every N epochs needs N ≥ 1, got {recipe.eval_every}"),
        (recipe.stacked_convs >= 1, f"the head needs 1 or more stacked convs, got {recipe.stacked_convs}"),
        (recipe.fpn_channels is None or (recipe.fpn_channels >= 32 and recipe.fpn_channels % 32 == 0),
         f"the FPN width must be a multiple of 32, got {recipe.fpn_channels}"),
    ]  # fmt: skip
    for ok, sentence in checks:
        if not ok:
            raise MaeDetError(sentence + ".")


def recipe_with(name: str, **overrides: Any) -> Recipe:
    """A preset with some values replaced (None leaves the preset's), checked."""
    if name not in RECIPES:
        raise MaeDetError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    recipe = replace(RECIPES[name], **given)
    _check(recipe)
    return recipe
