"""The PyTorch modules a detector export traces: the network's raw outputs, and a postprocess with NMS in the graph.

The exported file is two traced graphs joined: the network (which fp16 / INT8 may lower) and the postprocess
(always fp32). The postprocess runs ONNX ``NonMaxSuppression`` with its class dimension — class-aware with no
coordinate-offset trick — over every image of the batch at once, then keeps each image's best ``max_per_img``
with a dense top-k, so every image gets its own detections:

* ``num_dets`` (B, 1) int64; ``boxes`` (B, K, 4) x1 y1 x2 y2 in input pixels; ``scores`` (B, K); ``labels``
  (B, K) int64; K = ``max_per_img``; slots past ``num_dets`` hold zeros and label -1.

In eager mode the same modules run torchvision's NMS with the ONNX operator's semantics (suppress at IoU >
threshold, keep scores > threshold, at most ``max_per_img`` per class), which is the reference the export is
checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import torch
import torch.nn as nn
from torch.onnx.operators import shape_as_tensor  # traced as a tensor, so the exported (H, W) stays dynamic
from torchvision.ops import nms

from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import Detections, PostprocessConfig, select_candidates

from .onnx_export import torch_to_onnx

__all__ = [
    "DETECTION_OUTPUTS",
    "INPUT_HW",
    "NmsPostprocess",
    "OnnxNms",
    "RawOutputs",
    "postprocess_graph",
    "unpad_detections",
]

DETECTION_OUTPUTS = ("num_dets", "boxes", "scores", "labels")
INPUT_HW = "input_hw"  # the link between the two graphs: the input's (H, W), for clamping boxes


class OnnxNms(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` over (B, M, 4) boxes and (B, C, M) scores → (S, 3) rows (image, class, box)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):  # type: ignore[override]
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = (scores[b, c] > score_thr).nonzero().flatten()
                keep = nms(boxes[b, candidates], scores[b, c, candidates], iou_thr)[:max_per_class]
                index = candidates[keep]
                rows.append(torch.stack([torch.full_like(index, b), torch.full_like(index, c), index], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_thr: float, score_thr: float):  # type: ignore[override]
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
        )


class RawOutputs(nn.Module):
    """The network part: (optionally uint8 → normalise) → the detector's raw per-level outputs (+ the input's H, W)."""

    def __init__(self, detector: GFocalV2, embed_preprocess: bool = False, with_input_hw: bool = False) -> None:
        super().__init__()
        self.detector = detector
        self.embed_preprocess = embed_preprocess
        self.with_input_hw = with_input_hw
        self.register_buffer("mean", torch.tensor(detector.mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(detector.std).view(1, -1, 1, 1) * 255.0, persistent=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.detector.output_names + ((INPUT_HW,) if self.with_input_hw else ())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.embed_preprocess:
            x = (x.float() - self.mean) / self.std
        outs = self.detector(x)
        if self.with_input_hw:
            outs = (*outs, shape_as_tensor(x)[2:4])
        return outs


class NmsPostprocess(nn.Module):
    """Raw per-level outputs + the input's (H, W) → padded per-image detections (see the module docstring)."""

    def __init__(self, strides: Sequence[int], num_classes: int, cfg: PostprocessConfig) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.cfg = cfg

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = len(self.strides)
        scores, distances, input_hw = inputs[:levels], inputs[levels : 2 * levels], inputs[2 * levels]
        batch = scores[0].shape[0]
        bounds = input_hw.to(torch.float32).view(1, 2).expand(batch, 2)
        boxes, candidates = select_candidates(scores, distances, self.strides, bounds, self.cfg.nms_pre)
        by_class = candidates.transpose(1, 2).contiguous()  # (B, C, M): NonMaxSuppression's layout
        cfg = self.cfg
        selected = OnnxNms.apply(boxes, by_class, cfg.max_per_img, cfg.iou_thr, cfg.score_thr)
        return self._top_detections(boxes, by_class, selected)

    def _top_detections(
        self, boxes: torch.Tensor, by_class: torch.Tensor, selected: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Each image's best ``max_per_img`` survivors, then the extra class channel dropped and the rest packed."""
        k = self.cfg.max_per_img
        num_points = by_class.shape[2]
        image, label, point = selected[:, 0], selected[:, 1], selected[:, 2]
        flat = by_class.flatten(1)  # (B, C·M)
        index = label * num_points + point
        dense = torch.full_like(flat, -1.0)  # -1: not a survivor (survivors score > score_thr >= 0)
        dense[image, index] = flat[image, index]
        top_scores, top_index = dense.topk(k, dim=1)
        top_labels = top_index // num_points
        valid = (top_scores >= 0) & (top_labels < self.num_classes)
        # pack the valid ones first, in score order: sort by (valid, earlier slot)
        rank = valid.to(torch.float32) * (k - torch.arange(k, dtype=torch.float32, device=flat.device))
        order = rank.topk(k, dim=1).indices
        valid = valid.gather(1, order)
        top_scores, top_labels = top_scores.gather(1, order), top_labels.gather(1, order)
        box_index = (top_index.gather(1, order) % num_points).unsqueeze(-1).expand(-1, -1, 4)
        out_boxes = boxes.gather(1, box_index) * valid.unsqueeze(-1).to(boxes.dtype)
        out_scores = top_scores * valid.to(top_scores.dtype)
        out_labels = torch.where(valid, top_labels, torch.full_like(top_labels, -1))
        return valid.sum(dim=1, keepdim=True), out_boxes, out_scores, out_labels


def postprocess_graph(
    detector: GFocalV2, raw: Sequence[torch.Tensor], cfg: PostprocessConfig, *, dynamic: bool, opset: int
) -> onnx.ModelProto:
    """Raw outputs + ``input_hw`` → ``num_dets``, ``boxes``, ``scores``, ``labels`` (NMS in the graph)."""
    module = NmsPostprocess(detector.strides, detector.num_classes, cfg).eval()
    names = [*detector.output_names, INPUT_HW]
    axes = {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in detector.output_names}
    axes |= {name: {0: "batch"} for name in DETECTION_OUTPUTS}
    return torch_to_onnx(
        module, tuple(raw), DETECTION_OUTPUTS, dynamic=dynamic, opset=opset, input_names=names, axes=axes
    )


def unpad_detections(num_dets: Any, boxes: Any, scores: Any, labels: Any) -> list[Detections]:
    """The padded (B, K) outputs of an exported detector → one :class:`Detections` per image."""
    out = []
    for b in range(len(num_dets)):
        n = int(num_dets[b][0])
        out.append(
            Detections(
                torch.as_tensor(boxes[b][:n], dtype=torch.float32),
                torch.as_tensor(scores[b][:n], dtype=torch.float32),
                torch.as_tensor(labels[b][:n], dtype=torch.int64),
            )
        )
    return out
