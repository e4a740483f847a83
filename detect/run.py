"""Detect objects in image files: read, letterbox, batch, run a backend, map boxes back to each original image."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from maedet.errors import MaeDetError
from maedet.images import image_size, read_image
from maedet.letterbox import TEST_SCALE, Letterboxed, collate, letterbox, letterboxed_hw
from maedet.memory import check_fits, forward_peak_bytes
from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import Detections, select_candidates

from .backends import Backend, TorchBackend

__all__ = ["ImageResult", "check_detect_memory", "detect_images", "detection_peak_bytes", "map_back", "read_image"]

# While an image is prepared: its decoded uint8 pixels, their float copy and the resized float copy (letterbox).
IMAGE_BYTES_PER_PIXEL = 3 * (1 + 4 + 4)


@dataclass
class ImageResult:
    """One image's detections in its own pixels (x1, y1, x2, y2)."""

    path: Path
    height: int
    width: int
    detections: Detections


def detection_peak_bytes(detector: GFocalV2, input_shape: tuple[int, int, int, int], nms_pre: int) -> int:
    """Peak bytes of the tensors one detection run creates (network and candidate selection, weights excluded),
    followed on meta tensors: nothing is allocated or computed."""
    stand_ins = {name: torch.empty_like(t, device="meta") for name, t in detector.state_dict(keep_vars=True).items()}

    def run(module: torch.nn.Module, x: torch.Tensor) -> None:
        outs = torch.func.functional_call(module, stand_ins, (x,))
        levels = len(detector.strides)
        bounds = x.new_empty((x.shape[0], 2))
        select_candidates(outs[:levels], outs[levels:], detector.strides, bounds, nms_pre)

    return forward_peak_bytes(detector, input_shape, run)


def check_detect_memory(
    paths: Sequence[Path], backend: Backend, scale: Sequence[int], batch_size: int
) -> tuple[tuple[int, int], ...]:
    """Read every image's header (pixel cap, see maedet.images) and refuse, before any image is decoded, a run
    whose largest batch cannot fit in memory; returns the images' (height, width)."""
    sizes = tuple(image_size(p) for p in paths)
    if not sizes:
        return sizes
    padded = [letterboxed_hw(hw, scale, backend.fixed_hw) for hw in sizes]
    h, w = max(p[0] for p in padded), max(p[1] for p in padded)  # a batch is padded to its tallest and widest
    needed = max(hh * ww for hh, ww in sizes) * IMAGE_BYTES_PER_PIXEL + batch_size * 3 * h * w * 4
    if isinstance(backend, TorchBackend):
        cfg = backend.cfg or backend.detector.postprocess_cfg
        needed += detection_peak_bytes(backend.detector, (batch_size, 3, h, w), cfg.nms_pre)
    check_fits(needed, f"detecting at up to {batch_size}×3×{h}×{w}")
    return sizes


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def default_scale(backend: Backend) -> tuple[int, int]:
    """The test scale when none is given: an exported file's own input size (a detector exported at 160 × 160 sees
    its images as it was checked, and a file with dynamic H and W is not fed 1333 × 800 images), else the authors'
    1333 × 800 (TEST_SCALE)."""
    if backend.export_hw is None:
        return TEST_SCALE
    return max(backend.export_hw), min(backend.export_hw)


def detect_images(
    paths: Sequence[str | os.PathLike[str]],
    backend: Backend,
    *,
    scale: Sequence[int] | None = None,
    batch_size: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> list[ImageResult]:
    """Run ``backend`` over ``paths``; ``on_batch(n)`` is called after every batch of n images (progress).

    ``scale`` (long and short side limits) defaults to :func:`default_scale`."""
    scale = default_scale(backend) if scale is None else scale
    if batch_size < 1:
        raise MaeDetError(f"batch size must be at least 1, got {batch_size}.")
    if backend.max_batch is not None:
        batch_size = backend.max_batch  # a static-batch file: exactly its batch (the last one is filled up)
    files = [Path(p) for p in paths]
    check_detect_memory(files, backend, scale, batch_size)
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


def map_back(detections: Detections, item: Letterboxed) -> Detections:
    """Boxes from network-input pixels to the original image's pixels, clamped to the original image."""
    sx, sy = item.scale_xy
    boxes = detections.boxes / torch.tensor([sx, sy, sx, sy], dtype=detections.boxes.dtype)
    oh, ow = item.original_hw
    limit = torch.tensor([ow, oh, ow, oh], dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    return Detections(boxes, detections.scores, detections.labels)
