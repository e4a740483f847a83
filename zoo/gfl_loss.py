"""The GFocalV2 training loss, with the authors' arithmetic (GFocalV2's mmdetection 2.6 ``GFocalHead.loss``).

Three terms, each summed over the pyramid levels in order (docs/training.md, "The loss", states every convention):

* **Quality Focal Loss** on the joint scores (already ``sigmoid · quality``, so binary cross-entropy on
  probabilities, no second sigmoid), over every class column: target 0 everywhere except a positive's own class,
  whose target is the IoU of its (detached) predicted box with its box; divided by Σ_images max(n_pos, 1).
* **GIoU loss** (× 2) and **Distribution Focal Loss** (× 0.25, sum ÷ 4) on the positives, in grid units, each
  positive weighted by its detached highest score; divided by the sum of those weights over the batch.

Two purposeful differences (the authors' code gives NaN and raises there): a batch without any box gives box losses
0, and under ``torch.distributed`` the two normalisers are averaged across processes as floats, so N processes
equal one process holding the whole global batch once DDP averages the gradients.

:func:`gfl_loss` takes the head's training outputs (see ``GFocalV2.forward_train``); ``GFocalV2.loss`` runs the
detector first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from maedet.errors import MaeDetError

from .gfl_targets import AssignedTargets, anchor_centres, assign_targets, level_anchors

__all__ = [
    "GflLoss",
    "aligned_iou",
    "bbox_to_distance",
    "distance_to_bbox",
    "distribution_focal_loss",
    "gfl_loss",
    "integral",
    "quality_focal_loss",
]

QFL_BETA = 2.0
GIOU_WEIGHT = 2.0
DFL_WEIGHT = 0.25
DFL_AVG_FACTOR = 4.0  # the DFL sum is divided by 4 (one weight per box side), then × 0.25
DFL_MARGIN = 0.1  # DFL targets are clamped to [0, reg_max − 0.1]
IOU_EPS = 1e-6


@dataclass
class GflLoss:
    """Per-level losses (already normalised) and the two normalisers; :meth:`sums` is what is back-propagated."""

    loss_cls: list[torch.Tensor]
    loss_bbox: list[torch.Tensor]
    loss_dfl: list[torch.Tensor]
    num_total_samples: float  # Σ_images max(n_pos, 1) (averaged over processes), at least 1: the QFL divisor
    bbox_avg_factor: float  # Σ weight of the positives (averaged over processes): the box-loss divisor
    targets: AssignedTargets

    def sums(self) -> dict[str, torch.Tensor]:
        """Each term summed over the levels in order (Python ``sum`` from 0, as mmdetection's log does)."""
        return {"loss_cls": sum(self.loss_cls), "loss_bbox": sum(self.loss_bbox), "loss_dfl": sum(self.loss_dfl)}


def quality_focal_loss(
    scores: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor, num_classes: int, beta: float = QFL_BETA
) -> torch.Tensor:
    """(N,) QFL per anchor: Σ over the columns of BCE(p, target)·|target − p|^β, on probabilities ``scores`` (N, C).

    The target is 0 in every column but a positive's label (0 ≤ label < num_classes), where it is ``quality``. An
    extra column (C = num_classes + 1) is thus always target 0, which is what the authors' code computes too.
    """
    loss = F.binary_cross_entropy(scores, scores.new_zeros(scores.shape), reduction="none") * scores.pow(beta)
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    pos_labels = labels[pos]
    pos_scores, pos_quality = scores[pos, pos_labels], quality[pos]
    pos_loss = F.binary_cross_entropy(pos_scores, pos_quality, reduction="none")
    loss[pos, pos_labels] = pos_loss * (pos_quality - pos_scores).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(M,) DFL: cross-entropy towards the two bins around the continuous ``target``, weighted by nearness."""
    left = target.long()
    right = left + 1
    weight_left = right.to(target.dtype) - target
    weight_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * weight_left
        + F.cross_entropy(logits, right, reduction="none") * weight_right
    )


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, giou: bool = False, eps: float = IOU_EPS) -> torch.Tensor:
    """(P,) IoU, or generalised IoU, of matching rows; union and enclosing area are clamped to at least ``eps``."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    eps_t = area1.new_tensor([eps])
    union = torch.max(area1 + area2 - overlap, eps_t)
    ious = overlap / union
    if not giou:
        return ious
    enclose_wh = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])).clamp(0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def integral(logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(P, 4·(reg_max+1)) side logits → (P, 4) expected distances: softmax over the bins · (0, 1, …, reg_max)."""
    prob = F.softmax(logits.reshape(-1, reg_max + 1), dim=1)
    project = torch.linspace(0, reg_max, reg_max + 1, dtype=prob.dtype, device=prob.device)
    return F.linear(prob, project).reshape(-1, 4)


def distance_to_bbox(points: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Boxes x1 = px − left, y1 = py − top, x2 = px + right, y2 = py + bottom (not clamped)."""
    return torch.stack(
        [
            points[..., 0] - distance[..., 0],
            points[..., 1] - distance[..., 1],
            points[..., 0] + distance[..., 2],
            points[..., 1] + distance[..., 3],
        ],
        -1,
    )


def bbox_to_distance(points: torch.Tensor, boxes: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(P, 4) distances from the points to the box sides, clamped to [0, reg_max − 0.1]: the DFL targets."""
    upper = reg_max - DFL_MARGIN
    sides = [
        points[:, 0] - boxes[:, 0],
        points[:, 1] - boxes[:, 1],
        boxes[:, 2] - points[:, 0],
        boxes[:, 3] - points[:, 1],
    ]
    return torch.stack([s.clamp(min=0, max=upper) for s in sides], -1)


@dataclass
class _LevelSums:
    """One level's un-normalised terms: QFL sum, GIoU and DFL sums, and the sum of the positives' weights."""

    qfl: torch.Tensor
    giou: torch.Tensor
    dfl: torch.Tensor
    weight: torch.Tensor | None  # None when the level has no positive


def _box_terms(
    scores: torch.Tensor, preds: torch.Tensor, centres: torch.Tensor, boxes: torch.Tensor, reg_max: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positives' IoU targets, weights, GIoU and DFL sums; centres and boxes in grid units (÷ stride)."""
    weight = scores.detach().max(dim=1).values
    pred_boxes = distance_to_bbox(centres, integral(preds, reg_max))
    quality = aligned_iou(pred_boxes.detach(), boxes)
    giou = GIOU_WEIGHT * ((1 - aligned_iou(pred_boxes, boxes, giou=True)) * weight).sum()
    dfl_target = bbox_to_distance(centres, boxes, reg_max).reshape(-1)
    dfl_each = distribution_focal_loss(preds.reshape(-1, reg_max + 1), dfl_target)
    dfl = DFL_WEIGHT * ((dfl_each * weight[:, None].expand(-1, 4).reshape(-1)).sum() / DFL_AVG_FACTOR)
    return quality, weight, giou, dfl


def _level_sums(
    cls_score: torch.Tensor,
    bbox_pred: torch.Tensor,
    targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    stride: int,
    num_classes: int,
    reg_max: int,
) -> _LevelSums:
    """One level, all images flattened image-major (anchor order within each image)."""
    labels, label_weights, bbox_targets = (t.reshape(-1, *t.shape[2:]) for t in targets)
    height, width = cls_score.shape[-2:]
    scores = cls_score.permute(0, 2, 3, 1).reshape(-1, cls_score.shape[1])
    preds = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (reg_max + 1))
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    quality = label_weights.new_zeros(labels.shape)
    if pos.numel() > 0:
        centres = anchor_centres(level_anchors(height, width, stride, scores.device))[pos % (height * width)] / stride
        quality[pos], weight, giou, dfl = _box_terms(
            scores[pos], preds[pos], centres, bbox_targets[pos] / stride, reg_max
        )
        weight_sum = weight.sum()
    else:  # zero, but in the graph (every parameter still receives a gradient)
        giou = dfl = bbox_pred.sum() * 0
        weight_sum = None
    qfl = (quality_focal_loss(scores, labels, quality, num_classes) * label_weights).sum()
    return _LevelSums(qfl, giou, dfl, weight_sum)


def _normalisers(num_total_pos: int, weight_sum: torch.Tensor | float, device: torch.device) -> tuple[float, float]:
    """(QFL divisor, box-loss divisor), averaged over processes when torch.distributed runs several."""
    count = torch.tensor([float(num_total_pos)], dtype=torch.float64, device=device)
    weights = torch.as_tensor(weight_sum, dtype=torch.float64, device=device).reshape(1)  # no host round trip
    stats = torch.cat([count, weights])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats.div_(dist.get_world_size()))
    num_total_samples, avg_factor = stats.tolist()
    return max(num_total_samples, 1.0), avg_factor


def _checked_targets(
    targets: Sequence[Mapping[str, torch.Tensor]], batch: int, num_classes: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Boxes (N, 4) float32 and labels (N,) int64 per image, on ``device``; anything malformed is one sentence."""
    if len(targets) != batch:
        raise MaeDetError(f"the loss needs one target per image: {batch} images, {len(targets)} targets.")
    boxes_out, labels_out = [], []
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
            raise MaeDetError(f"target {i} must be a mapping with 'boxes' and 'labels'.")
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device)
        labels = torch.as_tensor(target["labels"], device=device)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
            raise MaeDetError(
                f"target {i}: boxes must be (N, 4) and labels (N,), got {tuple(boxes.shape)} and {tuple(labels.shape)}."
            )
        if labels.is_floating_point() or labels.is_complex() or bool(((labels < 0) | (labels >= num_classes)).any()):
            raise MaeDetError(f"target {i}: labels must be integers in [0, {num_classes}), got {labels.tolist()}.")
        if not bool(torch.isfinite(boxes).all()):
            raise MaeDetError(f"target {i}: boxes must be finite.")
        boxes_out.append(boxes)
        labels_out.append(labels.long())
    return boxes_out, labels_out


def _checked_pad_sizes(
    pad_sizes: Sequence[Sequence[int]], batch: int, input_size: tuple[int, int] | None
) -> list[tuple[int, int]]:
    """One positive (h, w) per image, within the batch tensor when its size is known."""
    sizes = [tuple(int(v) for v in size) for size in pad_sizes]
    if len(sizes) != batch or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise MaeDetError(f"pad_sizes needs one positive (height, width) per image: {batch} images, got {sizes}.")
    if input_size is not None and any(h > input_size[0] or w > input_size[1] for h, w in sizes):
        raise MaeDetError(f"every pad size must fit the {input_size[0]}×{input_size[1]} batch, got {sizes}.")
    return sizes  # type: ignore[return-value]


def gfl_loss(
    cls_scores: Sequence[torch.Tensor],
    bbox_preds: Sequence[torch.Tensor],
    targets: Sequence[Mapping[str, torch.Tensor]],
    pad_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    num_classes: int,
    reg_max: int = 16,
    input_size: tuple[int, int] | None = None,
) -> GflLoss:
    """The loss of one batch from the head's training outputs.

    ``cls_scores``: per level (B, C, H, W) joint scores, C = num_classes or num_classes + 1; ``bbox_preds``: per level
    (B, 4·(reg_max+1), H, W) Scale-multiplied side logits; ``targets``: per image ``{"boxes": (N, 4) xyxy input pixels,
    "labels": (N,)}``; ``pad_sizes``: per image (h, w) of its padded extent in the batch tensor (decides which anchors
    are valid); ``input_size``: the batch tensor's (h, w), if known, to check the pad sizes against. Always computed
    in float32, outside autocast, as the authors' ``force_fp32`` does.
    """
    device = cls_scores[0].device
    batch = cls_scores[0].shape[0]
    gt_boxes, gt_labels = _checked_targets(targets, batch, num_classes, device)
    pads = _checked_pad_sizes(pad_sizes, batch, input_size)
    with torch.autocast(device_type=device.type, enabled=False):
        cls_scores = [s.float() for s in cls_scores]
        bbox_preds = [p.float() for p in bbox_preds]
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        assigned = assign_targets(sizes, strides, gt_boxes, gt_labels, pads, num_classes, device)
        levels = [
            _level_sums(score, pred, level_targets, stride, num_classes, reg_max)
            for score, pred, stride, *level_targets in zip(
                cls_scores,
                bbox_preds,
                strides,
                assigned.labels,
                assigned.label_weights,
                assigned.bbox_targets,
                strict=True,
            )
        ]
        weight_sum = sum(level.weight for level in levels if level.weight is not None)
        num_total_pos = sum(max(n, 1) for n in assigned.num_pos)
        num_total_samples, avg_factor = _normalisers(num_total_pos, weight_sum, device)
        # A batch without positives anywhere: box terms are zero already; the authors' 0/0 would give NaN.
        box_divisor = avg_factor if avg_factor > 0 else 1.0
        return GflLoss(
            loss_cls=[level.qfl / num_total_samples for level in levels],
            loss_bbox=[level.giou / box_divisor for level in levels],
            loss_dfl=[level.dfl / box_divisor for level in levels],
            num_total_samples=num_total_samples,
            bbox_avg_factor=avg_factor,
            targets=assigned,
        )
