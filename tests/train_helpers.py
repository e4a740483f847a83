"""Shared pieces of the training tests: a tiny synthetic set and tiny settings (a 5-stage toy structure, FPN 32)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from maedet.train import ModelSpec, TrainSettings, recipe_with

DATA = Path(__file__).parent / "data"
TINY_STRUCTURE = str(DATA / "train_tiny_structure.json")


def make_shapes(root: Path, train: int = 8, val: int = 4, size: int = 64) -> Path:
    from maedet.train.shapes import generate_shapes

    return generate_shapes(root, train=train, val=val, size=size, seed=0)


def tiny_recipe(**overrides):
    """64-px images, no flip or scale jitter unless asked, FPN 32 with one head conv: a step takes milliseconds."""
    values = dict(lr=0.08, warmup_iters=2, steps=(100,), epochs=2, short_range=(64, 64), long_max=64, flip=0.0,
                  batch_per_process=4, eval_scale=(64, 64), eval_every=1, fpn_channels=32, stacked_convs=1,
                  sync_bn=True)  # fmt: skip
    values.update(overrides)
    return recipe_with("demo", **values)


def tiny_settings(shapes: Path, out: Path, val: bool = False, **recipe_overrides) -> TrainSettings:
    settings = TrainSettings(
        data=str(shapes / "train.json"),
        images=str(shapes / "train"),
        out=str(out),
        model=ModelSpec("gfl", TINY_STRUCTURE),
        recipe=tiny_recipe(**recipe_overrides),
        device="cpu",
        channels_last=False,  # exactness tests compare sums in one order; the layout has its own test
    )
    if val:
        settings = replace(settings, val_data=str(shapes / "val.json"), val_images=str(shapes / "val"))
    return settings
