"""The training data of a run: the COCO records, every image checked first, and a loader per process."""

from __future__ import annotations

import logging

from torch.utils.data import DistributedSampler

from maedet.errors import MaeDetError

from .coco_data import CocoRecords, check_images, load_coco
from .dataset import DetectionDataset, DetectionLoader, make_loader
from .distributed import Distributed
from .recipe import Recipe
from .transforms import TrainTransform

__all__ = ["load_train_records", "make_train_loader"]

LOGGER = logging.getLogger("maedet")


def load_train_records(annotations: str, images: str, global_batch: int) -> CocoRecords:
    """The training records, every image header read (a missing or unreadable one is named) and the batch fitting."""
    coco = load_coco(annotations, images)
    check_images(coco.records)
    if global_batch > len(coco.records):
        raise MaeDetError(
            f"the global batch of {global_batch} images is larger than the {len(coco.records)} training images of "
            f"{annotations!r}; use a smaller --batch-size or fewer processes."
        )
    return coco


def make_train_loader(coco: CocoRecords, recipe: Recipe, dist: Distributed, seed: int, workers: int) -> DetectionLoader:
    """Multi-scale, flipped batches of ``batch_per_process`` images; the sampler splits each epoch's order."""
    transform = TrainTransform(recipe.short_range, recipe.long_max, recipe.flip)
    dataset = DetectionDataset(coco.records, transform, seed=seed)
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
    return make_loader(dataset, recipe.batch_per_process, sampler=sampler, workers=workers, seed=seed, drop_last=True)
