"""GFocalV2 training targets: anchors, the anchors an image's padding leaves valid, and ATSS assignment.

The conventions are the authors' (GFocalV2's mmdetection 2.6 ``GFocalHead.get_targets`` with ``ATSSAssigner``;
docs/training.md lists them): one anchor per feature-map cell, an ``8·stride`` square centred at
(x·stride, y·stride), row-major, levels concatenated; an anchor is valid when its cell lies inside the image's
*padded* size; ATSS picks, per level and per ground-truth box, the ``min(9, #valid)`` valid anchors whose centres are
nearest (Euclidean), takes mean + unbiased std of their IoUs as the box's threshold and keeps the candidates with
IoU ≥ threshold whose centre lies more than 0.01 px inside the box; an anchor claimed by several boxes goes to the
one it overlaps most.

Ties, which the authors leave to torch, are broken deterministically here: at equal centre distance the anchor
that comes first (lower index in the level's row-major order) is picked, and at equal IoU the box that comes
first in the image's target list wins.

Everything is vectorised over all anchors and all boxes of an image; Python loops run over images and levels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

from .gfl_postprocess import level_points

__all__ = ["AssignedTargets", "anchor_centres", "assign_targets", "atss_assign", "level_anchors", "valid_flags"]

ANCHOR_SCALE = 8  # the authors' octave_base_scale: an anchor is an (8·stride)-wide square
ATSS_TOPK = 9
CENTRE_MARGIN = 0.01  # a positive anchor's centre lies strictly more than this inside its box (pixels)
_NO_OVERLAP = -100000000.0  # the authors' -INF: marks candidates that are not positive


@dataclass
class AssignedTargets:
    """Targets per level, images stacked: ``labels`` (B, n_l) int64, ``label_weights`` (B, n_l), ``bbox_targets``
    (B, n_l, 4) xyxy pixels; ``num_pos`` per image. Background has label ``num_classes``; invalid anchors weight 0."""

    labels: list[torch.Tensor]
    label_weights: list[torch.Tensor]
    bbox_targets: list[torch.Tensor]
    num_pos: list[int]


def level_anchors(height: int, width: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """(H·W, 4) anchor boxes of one level: squares of side 8·stride centred on the prior points, row-major."""
    points = level_points(height, width, stride, device)
    half = ANCHOR_SCALE * stride / 2
    return torch.cat([points - half, points + half], dim=1)


def anchor_centres(anchors: torch.Tensor) -> torch.Tensor:
    """(N, 2) centres (x1 + x2)/2, (y1 + y2)/2: exactly the prior points (x·stride, y·stride)."""
    return (anchors[:, :2] + anchors[:, 2:]) / 2.0


def valid_flags(
    level_sizes: Sequence[tuple[int, int]], strides: Sequence[int], pad_size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """(Σ H·W,) bool: a cell (x, y) is valid iff x < ceil(pad_w / stride) and y < ceil(pad_h / stride)."""
    pad_h, pad_w = (int(v) for v in pad_size)
    flags = []
    for (height, width), stride in zip(level_sizes, strides, strict=True):
        rows = torch.arange(height, device=device) < -(-pad_h // stride)
        cols = torch.arange(width, device=device) < -(-pad_w // stride)
        flags.append((rows[:, None] & cols[None, :]).reshape(-1))
    return torch.cat(flags)


def _nearest_candidates(distances: torch.Tensor, num_per_level: Sequence[int], topk: int) -> torch.Tensor:
    """(K, G) indices of each box's ``min(topk, n_l)`` nearest anchors per level, nearest first, levels in order.

    Distances are ≥ 0, so their float32 bit patterns sort like the values; appending the anchor's index to the
    bits makes every key unique, so equal distances go to the lower index whatever top-k algorithm torch uses.
    """
    candidates, start = [], 0
    for count in num_per_level:
        level = distances[start : start + count]
        index = torch.arange(count, device=distances.device, dtype=torch.int64)[:, None]
        keys = (level.contiguous().view(torch.int32).to(torch.int64) << 32) | index
        k = min(topk, count)
        candidates.append(keys.topk(k, dim=0, largest=False).indices + start)
        start += count
    return torch.cat(candidates, dim=0)


def atss_assign(
    anchors: torch.Tensor, num_per_level: Sequence[int], gt_boxes: torch.Tensor, topk: int = ATSS_TOPK
) -> torch.Tensor:
    """(A,) index of the box each (valid) anchor is assigned to, −1 for background. ``anchors`` (A, 4), boxes (G, 4).

    Computed in float32, as the authors' code does, whatever the inputs' dtype.
    """
    anchors, gt_boxes = anchors.float(), gt_boxes.float()
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned
    overlaps = box_iou(anchors, gt_boxes)  # (A, G); union ≥ an anchor's area, so no eps is ever needed
    centres = anchor_centres(anchors)
    gt_centres = anchor_centres(gt_boxes)
    distances = (centres[:, None, :] - gt_centres[None, :, :]).pow(2).sum(-1).sqrt()
    candidates = _nearest_candidates(distances, num_per_level, topk)  # (K, G)
    candidate_overlaps = overlaps.gather(0, candidates)
    threshold = candidate_overlaps.mean(0) + candidate_overlaps.std(0)  # torch's std: unbiased (n − 1)
    cx, cy = centres[candidates, 0], centres[candidates, 1]
    sides = torch.stack([cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=1)
    is_pos = (candidate_overlaps >= threshold[None, :]) & (sides.min(dim=1).values > CENTRE_MARGIN)
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    pos_anchor, pos_gt = candidates[is_pos], gt_index[is_pos]
    claimed = torch.full_like(overlaps, _NO_OVERLAP)
    claimed[pos_anchor, pos_gt] = overlaps[pos_anchor, pos_gt]
    best, best_gt = claimed.max(dim=1)  # equal IoUs: torch returns the first maximum, the box listed first
    return torch.where(best != _NO_OVERLAP, best_gt, assigned)


def _image_targets(
    anchors: torch.Tensor,
    valid: torch.Tensor,
    num_per_level: Sequence[int],
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One image's labels, label weights and box targets over all its anchors (invalid ones: background, weight 0)."""
    valid_index = valid.nonzero().squeeze(1)
    valid_per_level = [int(v.sum()) for v in valid.split(list(num_per_level))]
    assigned = atss_assign(anchors[valid_index], valid_per_level, gt_boxes)
    pos = assigned >= 0
    pos_index, pos_gt = valid_index[pos], assigned[pos]
    labels = torch.full((anchors.shape[0],), num_classes, dtype=torch.int64, device=anchors.device)
    labels[pos_index] = gt_labels[pos_gt]
    label_weights = anchors.new_zeros(anchors.shape[0])
    label_weights[valid_index] = 1.0
    bbox_targets = torch.zeros_like(anchors)
    bbox_targets[pos_index] = gt_boxes[pos_gt]
    return labels, label_weights, bbox_targets, int(pos_index.numel())


def assign_targets(
    level_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    gt_boxes: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    pad_sizes: Sequence[tuple[int, int]],
    num_classes: int,
    device: torch.device,
) -> AssignedTargets:
    """ATSS targets for a batch: boxes (N_i, 4) xyxy pixels and labels (N_i,) per image; sizes (h, w) per level."""
    per_level = [level_anchors(h, w, s, device) for (h, w), s in zip(level_sizes, strides, strict=True)]
    anchors = torch.cat(per_level)
    counts = [a.shape[0] for a in per_level]
    images = [
        _image_targets(anchors, valid_flags(level_sizes, strides, pad, device), counts, boxes, labels, num_classes)
        for boxes, labels, pad in zip(gt_boxes, gt_labels, pad_sizes, strict=True)
    ]
    stacked = [torch.stack([image[i] for image in images]) for i in range(3)]
    labels, weights, targets = (t.split(counts, dim=1) for t in stacked)
    return AssignedTargets(list(labels), list(weights), list(targets), [image[3] for image in images])
