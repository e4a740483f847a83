"""Training: a GFocalV2 detector (a searched MAE-DET backbone or any timm one) trained on COCO-format data.

``maedet-train`` and :func:`train` run the authors' recipe (``maedet-6x``) or a CPU demo, alone or under torchrun
(DDP, SyncBN), with exact resume, COCO evaluation, and the final detector as a folder the other tools take.
"""

from .model import ModelSpec, build_detector
from .recipe import RECIPES, Recipe, recipe_with, scaled_lr
from .run import TrainingInterrupted, TrainResult, resume, train
from .settings import TrainSettings

__all__ = [
    "RECIPES",
    "ModelSpec",
    "Recipe",
    "TrainResult",
    "TrainSettings",
    "TrainingInterrupted",
    "build_detector",
    "recipe_with",
    "resume",
    "scaled_lr",
    "train",
]
