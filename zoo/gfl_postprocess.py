"""From a GFocalV2 head's per-level outputs to detections: prior points, box decoding, selection, class-aware NMS.

The steps are the authors' (mmdetection 2.6 ``GFocalHead.get_bboxes`` with their test config):

1. per level, points at (x·stride, y·stride) in row-major order — no half-stride offset;
2. per level, the ``nms_pre`` points with the highest class score (max over classes) are kept;
3. boxes = point ± distances, clamped to [0, width] × [0, height] of the unpadded image (the authors' rule, when
   ``image_sizes`` are given) or of the whole input (without them — what an exported file with NMS inside does,
   since it cannot know where the padding starts; maedet-detect and maedet-eval use this rule throughout);
4. every (point, class) pair with score > ``score_thr`` (strict) is a candidate; class-aware NMS at IoU
   ``iou_thr``; the ``max_per_img`` highest survivors are kept;
5. only then, detections of the extra class channel (label == num_classes, present in the authors'
   81-channel checkpoints) are dropped, as their per-class result conversion does.

``select_candidates`` (steps 1–3) is written with fixed shapes (each level is padded with ``nms_pre`` zero-score
rows before its top-k), so the same code traces into an ONNX graph with dynamic batch and image size.
NMS here is torchvision's ``batched_nms``: it suppresses at IoU > threshold, while mmcv's CPU kernel suppresses
at IoU ≥ threshold; results differ only when two boxes of a class overlap at exactly the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from maedet.errors import MaeDetError

__all__ = [
    "MAX_DETECTIONS",
    "MAX_NMS_PRE",
    "Detections",
    "PostprocessConfig",
    "decode_boxes",
    "level_points",
    "postprocess",
    "select_candidates",
]

# Each level is padded with nms_pre rows of every class before its top-k (fixed shapes, see above): 10^9 would ask
# for 324 GB. The authors keep 1000 points per level and 100 detections; a hundred times that is still ~32 MB.
MAX_NMS_PRE = 100_000
MAX_DETECTIONS = 10_000


@dataclass(frozen=True)
class PostprocessConfig:
    """The authors' test settings (``test_cfg`` of their configs)."""

    nms_pre: int = 1000
    score_thr: float = 0.05
    iou_thr: float = 0.6
    max_per_img: int = 100

    def __post_init__(self) -> None:
        if self.nms_pre < 1 or self.max_per_img < 1:
            raise MaeDetError(f"nms_pre and max_per_img must be at least 1, got {self.nms_pre} and {self.max_per_img}.")
        if self.nms_pre > MAX_NMS_PRE or self.max_per_img > MAX_DETECTIONS:
            raise MaeDetError(
                f"nms_pre and max_per_img must be at most {MAX_NMS_PRE:,} and {MAX_DETECTIONS:,} (the authors use "
                f"1000 and 100; every level is padded to nms_pre rows per class), got {self.nms_pre:,} and "
                f"{self.max_per_img:,}."
            )
        if not 0.0 <= self.score_thr < 1.0:
            raise MaeDetError(f"score_thr must be in [0, 1), got {self.score_thr}.")
        if not 0.0 < self.iou_thr <= 1.0:
            raise MaeDetError(f"iou_thr must be in (0, 1], got {self.iou_thr}.")


@dataclass
class Detections:
    """One image's detections: boxes (N, 4) as x1, y1, x2, y2; scores (N,); labels (N,) int64, best first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def level_points(height: int, width: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """(H·W, 2) prior points (x, y) = (col·stride, row·stride), row-major (x varies fastest)."""
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    grid_x = xs.view(1, -1).expand(height, width)
    grid_y = ys.view(-1, 1).expand(height, width)
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def decode_boxes(points: torch.Tensor, distances: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Boxes from points (N, 2) and distances (B, N, 4: left, top, right, bottom), clamped to bounds (B, 2: h, w)."""
    top_left = points - distances[..., :2]
    bottom_right = points + distances[..., 2:]
    limit = bounds.flip(-1).to(distances.dtype).repeat(1, 2).unsqueeze(1)  # (B, 1, 4): w, h, w, h
    return torch.minimum(torch.cat([top_left, bottom_right], dim=-1).clamp(min=0), limit)


def select_candidates(
    scores: Sequence[torch.Tensor],
    distances: Sequence[torch.Tensor],
    strides: Sequence[int],
    bounds: torch.Tensor,
    nms_pre: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1–3 for a batch: boxes (B, L·nms_pre, 4) and scores (B, L·nms_pre, C) over the L levels.

    Levels with fewer than ``nms_pre`` points are padded with zero-score rows, which never pass a score
    threshold; this keeps every shape independent of the image size.
    """
    all_boxes, all_scores = [], []
    for level_scores, level_dist, stride in zip(scores, distances, strides, strict=True):
        height, width = level_scores.shape[-2:]
        points = level_points(height, width, stride, level_scores.device)
        s = level_scores.flatten(2).transpose(1, 2)  # (B, H·W, C)
        boxes = decode_boxes(points, level_dist.flatten(2).transpose(1, 2), bounds)  # (B, H·W, 4)
        s = torch.cat([s, s.new_zeros((s.shape[0], nms_pre, s.shape[2]))], dim=1)
        boxes = torch.cat([boxes, boxes.new_zeros((boxes.shape[0], nms_pre, 4))], dim=1)
        top = s.max(dim=2).values.topk(nms_pre, dim=1).indices.unsqueeze(-1)  # (B, nms_pre, 1)
        all_scores.append(s.gather(1, top.expand(-1, -1, s.shape[2])))
        all_boxes.append(boxes.gather(1, top.expand(-1, -1, 4)))
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


def nms_image(boxes: torch.Tensor, scores: torch.Tensor, num_classes: int, cfg: PostprocessConfig) -> Detections:
    """Steps 4–5 for one image: boxes (M, 4), scores (M, C) → its detections."""
    point, label = (scores > cfg.score_thr).nonzero(as_tuple=True)
    cand_boxes, cand_scores = boxes[point], scores[point, label]
    keep = batched_nms(cand_boxes, cand_scores, label, cfg.iou_thr)[: cfg.max_per_img]
    keep = keep[label[keep] < num_classes]
    return Detections(cand_boxes[keep], cand_scores[keep], label[keep])


def image_bounds(
    batch: int, input_hw: tuple[int, int], image_sizes: Sequence[tuple[int, int]] | None, device: torch.device
) -> torch.Tensor:
    """(B, 2) clamping limits (h, w): each image's unpadded size, or the whole input."""
    if image_sizes is None:
        return torch.tensor([input_hw] * batch, dtype=torch.float32, device=device)
    sizes = [tuple(int(v) for v in s) for s in image_sizes]
    if len(sizes) != batch or any(len(s) != 2 for s in sizes):
        raise MaeDetError(f"image_sizes needs one (height, width) per image: {batch} images, got {list(sizes)}.")
    for h, w in sizes:
        if not (0 < h <= input_hw[0] and 0 < w <= input_hw[1]):
            raise MaeDetError(f"image size {h}×{w} does not fit the {input_hw[0]}×{input_hw[1]} input.")
    return torch.tensor(sizes, dtype=torch.float32, device=device)


def postprocess(
    scores: Sequence[torch.Tensor],
    distances: Sequence[torch.Tensor],
    strides: Sequence[int],
    num_classes: int,
    input_hw: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
    cfg: PostprocessConfig | None = None,
) -> list[Detections]:
    """The head's per-level outputs of a batch → one :class:`Detections` per image."""
    cfg = cfg or PostprocessConfig()
    bounds = image_bounds(scores[0].shape[0], input_hw, image_sizes, scores[0].device)
    boxes, cand_scores = select_candidates(scores, distances, strides, bounds, cfg.nms_pre)
    return [nms_image(b, s, num_classes, cfg) for b, s in zip(boxes, cand_scores, strict=True)]
