"""Train detectors: COCO-format data, the authors' augmentation and recipe, DDP, and a synthetic demo set.

``maedet-train`` and :func:`train` run the authors' recipe (``maedet-6x``) or a CPU demo, alone or under torchrun
(DDP, SyncBN), with exact resume, COCO evaluation, and the final detector as a folder the other tools take::

    from maedet.train import ModelSpec, TrainSettings, recipe_with, train
    train(TrainSettings(data="train.json", images="images/", out="runs/x", model=ModelSpec("maedet_s_gfl"),
                        recipe=recipe_with("maedet-6x")))

The data pieces work alone too::

    data = load_coco("train.json", "images/")
    check_images(data.records)
    loader = make_loader(DetectionDataset(data.records, TrainTransform()), 2, shuffle=True, workers=2, seed=0)
    for epoch in range(12):
        loader.set_epoch(epoch)
        for batch in loader:  # batch.images (B, 3, H, W), batch.targets, batch.pad_sizes, batch.image_ids
            ...
"""

from .coco_data import CocoRecords, DropCounts, ImageRecord, check_images, load_coco
from .dataset import Batch, DetectionDataset, DetectionItem, DetectionLoader, collate, make_loader
from .model import ModelSpec, build_detector
from .recipe import RECIPES, Recipe, recipe_with, scaled_lr
from .run import TrainingInterrupted, TrainResult, resume, train
from .settings import TrainSettings
from .shapes import SHAPE_CLASSES, generate_shapes
from .transforms import EvalTransform, TrainTransform, TransformedImage

__all__ = [
    "RECIPES",
    "SHAPE_CLASSES",
    "Batch",
    "CocoRecords",
    "DetectionDataset",
    "DetectionItem",
    "DetectionLoader",
    "DropCounts",
    "EvalTransform",
    "ImageRecord",
    "ModelSpec",
    "Recipe",
    "TrainResult",
    "TrainSettings",
    "TrainTransform",
    "TrainingInterrupted",
    "TransformedImage",
    "build_detector",
    "check_images",
    "collate",
    "generate_shapes",
    "load_coco",
    "make_loader",
    "recipe_with",
    "resume",
    "scaled_lr",
    "train",
]
