"""The authors' training and test pipelines on one image and its boxes: resize, flip, normalise, pad to 32.

Training (mmdetection's ``Resize(img_scale=[(1333, 480), (1333, 960)], multiscale_mode='range', keep_ratio=True)``,
``RandomFlip(0.5)``, ``Normalize``, ``Pad(size_divisor=32)``): per image a short-edge target is drawn uniformly
from the integers of ``short_range``; the image is resized with the inference letterbox
(:func:`maedet.letterbox.letterbox`) at the scale (``long_limit``, short-edge target), which gives
factor = min(long_limit / long side, short target / short side) and sides ``int(side · factor + 0.5)``. Boxes
are multiplied by the actual per-axis ratios (new / old size) and clipped to the new image; a flip maps
x1' = w − x2, x2' = w − x1. The image is normalised and padded with 0 at the bottom and right to a multiple of
32 (its pad size). Evaluation is the same letterbox at the fixed test scale, no flip.

The random draws come from a ``torch.Generator`` the caller seeds (the dataset seeds one per image, epoch and
seed), so a run is reproducible whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from maedet.errors import MaeDetError
from maedet.letterbox import TEST_SCALE, Letterboxed, collate, letterbox

__all__ = ["EvalTransform", "TrainTransform", "TransformedImage", "flip_boxes", "resize_boxes"]


@dataclass(frozen=True)
class TransformedImage:
    """An image ready for the network and its boxes in the network input's pixels."""

    image: torch.Tensor  # (3, pad_h, pad_w) float32, normalised, zero at the bottom/right padding
    boxes: torch.Tensor  # (N, 4) float32 xyxy
    image_size: tuple[int, int]  # (h, w) after resizing, before padding (mmdetection's img_shape)
    pad_size: tuple[int, int]  # (h, w) padded to a multiple of 32 (mmdetection's pad_shape)
    scale_xy: tuple[float, float]  # new / old size per axis
    flipped: bool = False


def resize_boxes(boxes: np.ndarray, scale_xy: tuple[float, float], new_hw: tuple[int, int]) -> np.ndarray:
    """Boxes times the per-axis factors, clipped to the resized image (mmdetection's ``Resize`` on boxes)."""
    sx, sy = scale_xy
    out = boxes.astype(np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, new_hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, new_hw[0])
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip in an image ``width`` wide: x1' = w − x2, x2' = w − x1 (mmdetection 2.x, no −1)."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MaeDetError(f"an image must be RGB uint8 (H, W, 3), got {tuple(image.shape)} {image.dtype}.")
    return image


def _finish(
    boxed: Letterboxed, boxes: np.ndarray, mean: Sequence[float], std: Sequence[float], flip: bool
) -> TransformedImage:
    new_hw = boxed.resized_hw
    out_boxes = resize_boxes(boxes.reshape(-1, 4), boxed.scale_xy, new_hw)
    if flip:
        boxed = Letterboxed(boxed.pixels.flip(-1), boxed.original_hw, boxed.padded_hw)
        out_boxes = flip_boxes(out_boxes, new_hw[1])
    image = collate([boxed], mean, std)[0]  # normalise, then pad with 0 to the image's pad size
    return TransformedImage(image, torch.from_numpy(out_boxes), new_hw, boxed.padded_hw, boxed.scale_xy, flip)


@dataclass(frozen=True)
class TrainTransform:
    """Multi-scale resize (keep ratio), random horizontal flip, normalise, pad to 32 (see the module docstring)."""

    short_range: tuple[int, int] = (480, 960)
    long_limit: int = 1333
    flip_prob: float = 0.5
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

    def __post_init__(self) -> None:
        lo, hi = self.short_range
        if not (1 <= lo <= hi) or self.long_limit < 1:
            raise MaeDetError(
                f"the training scale needs 1 <= short min <= short max and a positive long limit, "
                f"got short {lo}..{hi}, long {self.long_limit}."
            )
        if not 0.0 <= self.flip_prob <= 1.0:
            raise MaeDetError(f"the flip probability must be in [0, 1], got {self.flip_prob}.")

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, bool]:
        """The short-edge target (uniform over the integers of ``short_range``) and whether to flip."""
        lo, hi = self.short_range
        short = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < self.flip_prob)
        return short, flip

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, generator: torch.Generator | None = None
    ) -> TransformedImage:
        short, flip = self.draw(generator)
        boxed = letterbox(_check_image(image), (self.long_limit, short))
        return _finish(boxed, boxes, self.mean, self.std, flip)


@dataclass(frozen=True)
class EvalTransform:
    """The detector's inference preprocessing (letterbox at the test scale, normalise, pad to 32), boxes mapped."""

    scale: tuple[int, int] = TEST_SCALE
    mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, generator: torch.Generator | None = None
    ) -> TransformedImage:
        boxed = letterbox(_check_image(image), self.scale)
        return _finish(boxed, boxes, self.mean, self.std, False)
