"""Train detectors: COCO-format data, the authors' augmentation, batches, and a synthetic demo set.

from maedet.train import load_coco, check_images, DetectionDataset, TrainTransform, make_loader
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
from .shapes import SHAPE_CLASSES, generate_shapes
from .transforms import EvalTransform, TrainTransform, TransformedImage

__all__ = [
    "SHAPE_CLASSES",
    "Batch",
    "CocoRecords",
    "DetectionDataset",
    "DetectionItem",
    "DetectionLoader",
    "DropCounts",
    "EvalTransform",
    "ImageRecord",
    "TrainTransform",
    "TransformedImage",
    "check_images",
    "collate",
    "generate_shapes",
    "load_coco",
    "make_loader",
]
