"""Detect objects in image files: read, letterbox, batch, run a backend, map boxes back to each original image."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maedet.errors import MaeDetError
from maedet.zoo.gfl_postprocess import Detections

from .backends import Backend
from .preprocess import TEST_SCALE, Letterboxed, collate, letterbox, map_back

__all__ = ["ImageResult", "detect_images", "read_image"]


@dataclass
class ImageResult:
    """One image's detections in its own pixels (x1, y1, x2, y2)."""

    path: Path
    height: int
    width: int
    detections: Detections


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """RGB uint8 (H, W, 3), upright per its EXIF orientation (as OpenCV, which mmdetection reads with)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except FileNotFoundError:
        raise MaeDetError(f"image {str(path)!r} does not exist.") from None
    except (OSError, UnidentifiedImageError):
        raise MaeDetError(f"image {str(path)!r} cannot be read as an image.") from None


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def detect_images(
    paths: Sequence[str | os.PathLike[str]],
    backend: Backend,
    *,
    scale: Sequence[int] = TEST_SCALE,
    batch_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> list[ImageResult]:
    """Run ``backend`` over ``paths``; ``on_batch(n)`` is called after every batch of n images (progress)."""
    if batch_size < 1:
        raise MaeDetError(f"batch size must be at least 1, got {batch_size}.")
    if backend.max_batch is not None:
        batch_size = backend.max_batch  # a static-batch file: exactly its batch (the last one is filled up)
    files = [Path(p) for p in paths]
    results: list[ImageResult] = []
    for group in _batches(files, batch_size):
        boxed = [letterbox(read_image(p), scale, backend.fixed_hw) for p in group]
        run_on = list(boxed) + [boxed[-1]] * (batch_size - len(boxed) if backend.max_batch else 0)
        dets = backend(_collate(run_on, backend), [b.resized_hw for b in run_on])
        for path, item, det in zip(group, boxed, dets, strict=False):
            results.append(ImageResult(path, item.original_hw[0], item.original_hw[1], map_back(det, item)))
        if on_batch is not None:
            on_batch(len(group))
    return results


def _collate(items: Sequence[Letterboxed], backend: Backend):
    return collate(items, backend.mean, backend.std, as_uint8=backend.input_uint8)
