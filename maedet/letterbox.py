"""Letterboxing as the authors test: keep the aspect ratio, fit (1333, 800), normalise, pad to a multiple of 32.

Detection, training and the exporter's INT8 calibration all feed images this way, so it lives in the base layer.
mmdetection's test pipeline (``Resize(keep_ratio=True)`` with ``img_scale=(1333, 800)``, ``Normalize``,
``Pad(size_divisor=32)``): the scale factor is min(1333 / long side, 800 / short side), the new size
``int(side · factor + 0.5)``, bilinear resizing, and zero padding *after* normalisation at the bottom and right.
Boxes map back by dividing by the per-axis factors (new size / old size; ``maedet.detect.run.map_back``).
Resizing here is PyTorch's bilinear without antialiasing (half-pixel centres, like OpenCV's ``INTER_LINEAR`` that
mmcv uses) on the uint8 pixels, rounded back to uint8; OpenCV's fixed-point arithmetic can differ by one grey level
on some pixels. The resize runs in float64 and rounds halves up with 1e-7 of slack: torch's kernel splits its work
differently for another number of threads, and in float32 a value that is exactly k + 0.5 could then round either
way, so the same image gave a pixel one grey level apart in a data-loader worker (one thread) and in the main
process.

A file exported with a static input size is fed a fixed ``H × W``: the image is scaled to fit inside it and
padded to exactly that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MaeDetError

__all__ = [
    "SIZE_DIVISOR",
    "TEST_SCALE",
    "Letterboxed",
    "collate",
    "fit_size",
    "letterbox",
    "letterboxed_hw",
    "rescale_size",
]

TEST_SCALE = (1333, 800)  # (long side limit, short side limit): the authors' img_scale
SIZE_DIVISOR = 32
_ROUNDING_SLACK = 1e-7  # far above float64's error at 255 (~1e-13), far below any real distance from k + 0.5


@dataclass
class Letterboxed:
    """One image ready for the network, and what it takes to map boxes back to the original."""

    pixels: torch.Tensor  # (3, h, w) uint8 after resizing, before padding
    original_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Per-axis factors new / old, as mmdetection's ``scale_factor``."""
        (h, w), (oh, ow) = self.resized_hw, self.original_hw
        return w / ow, h / oh


def rescale_size(hw: tuple[int, int], scale: Sequence[int] = TEST_SCALE) -> tuple[int, int]:
    """mmcv's ``rescale_size`` with keep_ratio: the largest size within (long, short) limits, rounded half up.

    A side never shrinks below one pixel (a 5000×1 strip at 1333 px would otherwise be 0 pixels tall).
    """
    h, w = hw
    long_limit, short_limit = max(scale), min(scale)
    if h < 1 or w < 1 or short_limit < 1:
        raise MaeDetError(f"cannot resize a {h}×{w} image to the scale {tuple(scale)}: every side must be positive.")
    factor = min(long_limit / max(h, w), short_limit / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def fit_size(hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """The largest aspect-keeping size inside a fixed ``target_hw`` (for static-size files)."""
    h, w = hw
    factor = min(target_hw[0] / h, target_hw[1] / w)
    return min(target_hw[0], max(1, int(h * factor + 0.5))), min(target_hw[1], max(1, int(w * factor + 0.5)))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def letterboxed_hw(
    hw: tuple[int, int], scale: Sequence[int] = TEST_SCALE, fixed_hw: tuple[int, int] | None = None
) -> tuple[int, int]:
    """The network input (padded) size :func:`letterbox` gives an image of ``hw``, without touching a pixel."""
    if fixed_hw:
        return fixed_hw
    new_hw = rescale_size(hw, scale)
    return _round_up(new_hw[0], SIZE_DIVISOR), _round_up(new_hw[1], SIZE_DIVISOR)


def letterbox(
    image: np.ndarray | torch.Tensor, scale: Sequence[int] = TEST_SCALE, fixed_hw: tuple[int, int] | None = None
) -> Letterboxed:
    """An RGB uint8 image (H, W, 3) resized for the detector (see the module docstring)."""
    pixels = torch.from_numpy(np.array(image, copy=True)) if isinstance(image, np.ndarray) else image
    if pixels.dim() != 3 or pixels.shape[2] != 3 or pixels.dtype != torch.uint8:
        raise MaeDetError(f"an image must be RGB uint8 (H, W, 3), got {tuple(pixels.shape)} {pixels.dtype}.")
    original = (int(pixels.shape[0]), int(pixels.shape[1]))
    new_hw = fit_size(original, fixed_hw) if fixed_hw else rescale_size(original, scale)
    chw = pixels.permute(2, 0, 1).to(torch.float64).unsqueeze(0)
    if new_hw != original:
        chw = F.interpolate(chw, size=new_hw, mode="bilinear", align_corners=False, antialias=False)
    resized = torch.floor(chw + (0.5 + _ROUNDING_SLACK)).clamp(0, 255).to(torch.uint8)[0]
    padded = fixed_hw or (_round_up(new_hw[0], SIZE_DIVISOR), _round_up(new_hw[1], SIZE_DIVISOR))
    return Letterboxed(resized, original, padded)


def collate(
    items: Sequence[Letterboxed], mean: Sequence[float], std: Sequence[float], as_uint8: bool = False
) -> torch.Tensor:
    """One batch, every image at the top left of the largest padded size: normalised floats padded with 0
    (after normalisation, as mmdetection), or uint8 pixels padded with the mean colour (the same after
    normalisation) for files that normalise inside the graph."""
    h = max(it.padded_hw[0] for it in items)
    w = max(it.padded_hw[1] for it in items)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    if as_uint8:
        batch = m.round().to(torch.uint8).expand(3, h, w).repeat(len(items), 1, 1, 1)
    else:
        batch = torch.zeros(len(items), 3, h, w)
    for i, it in enumerate(items):
        rh, rw = it.resized_hw
        batch[i, :, :rh, :rw] = it.pixels if as_uint8 else (it.pixels.float() - m) / s
    return batch
