"""GFocalV2 (Li et al., "Generalized Focal Loss V2", CVPR 2021): the detector the MAE-DET authors trained.

A timm backbone's C3..C5 feed an FPN (P3..P7, strides 8..128); a shared GFocalV2 head predicts, at every point
of every level, class scores already multiplied by a localization quality (DGQP: a tiny MLP on the top-k
statistics of the predicted box-side distributions) and four distances to the box sides (the expectation of a
17-bin distribution, times the level's stride). Inference is anchor-free: one point per feature-map cell at
(x·stride, y·stride).

The arithmetic follows the authors' mmdetection code exactly (see docs/detector.md): 81 class channels in their
checkpoints, the sigmoid applied once in the head, the level's Scale multiplying the logits before the softmax,
prior points without a half-stride offset, the extra levels computed from the P5 *output*, and so on.

``GFocalV2.forward`` returns the raw per-level tensors (what an exporter wants); ``GFocalV2.predict`` turns them
into per-image detections (see :mod:`maedet.zoo.gfl_postprocess`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from maedet.errors import MaeDetError

from .gfl_loss import gfl_loss
from .gfl_postprocess import Detections, PostprocessConfig, postprocess

__all__ = ["Fpn", "GFocalV2", "GFocalV2Head", "Integral", "QualityBranch"]

PYRAMID_REDUCTIONS = (8, 16, 32)  # C3, C4, C5: what the FPN takes from the backbone
MAX_REG_MAX = 256  # bins of the box-side distribution: 16 in the paper; each bin is 4 output channels per level


class Scale(nn.Module):
    """One learnable scalar; the head has one per pyramid level and multiplies the box logits by it."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Fpn(nn.Module):
    """Feature pyramid over C3..C5: 1×1 laterals, nearest top-down sums, 3×3 outputs, then stride-2 extra levels.

    The extra levels chain from the last *output* (P6 = conv(P5 out), P7 = conv(P6)) with no activation between,
    as the authors' ``add_extra_convs='on_output'``. Every conv has a bias; there is no norm and no activation.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_extra: int = 2) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_extra)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            # to the finer level's exact size (not a ×2 factor): odd sizes stay aligned
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals, strict=True)]
        for conv in self.extra_convs:
            outs.append(conv(outs[-1]))
        return outs


class AnySizeGroupNorm(nn.GroupNorm):
    """GroupNorm that also takes a group of one value (one channel per group on a 1×1 map).

    ``F.group_norm`` refuses that case with "Expected more than 1 value per channel when training", in eval mode too,
    although the result is well defined (the value minus its own mean is 0, so the output is the bias). A narrow
    head (``fpn_channels`` 32, one channel per group) meets it at P7 for any input of at most 128×128 pixels. The
    same ATen operator runs (and exports to ONNX) without that Python-side check; state-dict keys are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class ConvGnAct(nn.Module):
    """3×3 conv (no bias) → GroupNorm(32) → ReLU: one layer of a head tower."""

    def __init__(self, in_chs: int, out_chs: int, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.norm = AnySizeGroupNorm(num_groups, out_chs, eps=1e-5)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class QualityBranch(nn.Module):
    """DGQP: localization quality from the shape of the four side distributions (sharp peaks = good boxes).

    Input per side: the top-k bin probabilities and (``add_mean``) their mean, side-major; then 1×1 conv → ReLU →
    1×1 conv → sigmoid, giving one quality value per point.
    """

    def __init__(self, topk: int = 4, hidden: int = 64, add_mean: bool = True) -> None:
        super().__init__()
        self.topk = topk
        self.add_mean = add_mean
        self.fc1 = nn.Conv2d(4 * (topk + int(add_mean)), hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        """``prob``: (B, 4, bins, H, W) softmax over the bins → (B, 1, H, W) quality in (0, 1)."""
        top = prob.topk(self.topk, dim=2).values
        stat = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2) if self.add_mean else top
        return self.fc2(self.act(self.fc1(stat.flatten(1, 2)))).sigmoid()


class Integral(nn.Module):
    """The expected value of each side's distribution over the bins 0..reg_max (the box-side distance in strides)."""

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        # persistent: the authors' checkpoints carry it (bbox_head.integral.project)
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1), persistent=True)

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        """(B, 4, bins, H, W) probabilities → (B, 4, H, W) expectations."""
        return (prob * self.project.view(1, 1, -1, 1, 1)).sum(dim=2)


class GFocalV2Head(nn.Module):
    """Shared towers over every level; per level: joint class-quality scores and side distances in pixels."""

    def __init__(
        self,
        in_chs: int,
        cls_channels: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        feat_chs: int | None = None,
        stacked_convs: int = 4,
        reg_max: int = 16,
        reg_topk: int = 4,
        reg_channels: int = 64,
        add_mean: bool = True,
    ) -> None:
        super().__init__()
        feat_chs = feat_chs or in_chs
        self.strides = tuple(int(s) for s in strides)
        self.reg_max = reg_max
        # Registration order matches the authors' state dict (their checkpoints list keys in this order).
        self.cls_tower = nn.Sequential(
            *(ConvGnAct(in_chs if i == 0 else feat_chs, feat_chs) for i in range(stacked_convs))
        )
        self.reg_tower = nn.Sequential(
            *(ConvGnAct(in_chs if i == 0 else feat_chs, feat_chs) for i in range(stacked_convs))
        )
        self.cls_out = nn.Conv2d(feat_chs, cls_channels, 3, padding=1)
        self.reg_out = nn.Conv2d(feat_chs, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.quality = QualityBranch(reg_topk, reg_channels, add_mean)
        self.integral = Integral(reg_max)

    def _level_outputs(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joint scores (B, C, H, W), Scale-multiplied side logits (B, 4·(reg_max+1), H, W), their softmax."""
        logits = self.scales[level](self.reg_out(self.reg_tower(x)))
        prob = logits.unflatten(1, (4, self.reg_max + 1)).softmax(dim=2)
        scores = self.cls_out(self.cls_tower(x)).sigmoid() * self.quality(prob)
        return scores, logits, prob

    def forward_level(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) scores = sigmoid(cls) · quality; (B, 4, H, W) distances (left, top, right, bottom) in pixels."""
        scores, _, prob = self._level_outputs(x, level)
        distances = self.integral(prob) * self.strides[level]
        return scores, distances

    def _check_levels(self, features: Sequence[torch.Tensor]) -> None:
        if len(features) != len(self.strides):
            raise MaeDetError(f"the head expects {len(self.strides)} pyramid levels, got {len(features)}.")

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        self._check_levels(features)
        outs = [self.forward_level(x, i) for i, x in enumerate(features)]
        return [s for s, _ in outs], [d for _, d in outs]

    def forward_train(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """What the loss takes, per level: joint scores (B, C, H, W) and the Scale-multiplied side logits
        (B, 4·(reg_max+1), H, W) — the distributions before the softmax, not the distances."""
        self._check_levels(features)
        outs = [self._level_outputs(x, i) for i, x in enumerate(features)]
        return [s for s, _, _ in outs], [logits for _, logits, _ in outs]

    def init_weights(self, prior_prob: float = 0.01) -> None:
        """The authors' initialisation: N(0, 0.01) convs, class bias at the focal-loss prior."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))


def create_backbone(backbone: str | nn.Module, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm ``features_only`` model giving C3..C5 (strides 8, 16, 32), or a given module that does."""
    if isinstance(backbone, str):
        if not timm.is_model(backbone):
            raise MaeDetError(f"unknown backbone {backbone!r}: not a maedet model nor a registered timm model.")
        try:
            module = timm.create_model(
                backbone, pretrained=pretrained, features_only=True, out_indices=(-3, -2, -1), **kwargs
            )
        except (TypeError, ValueError, RuntimeError) as exc:
            raise MaeDetError(
                f"cannot build backbone {backbone!r} with features: {' '.join(str(exc).split())}"
            ) from None
    else:
        module = backbone
    info = getattr(module, "feature_info", None)
    reductions = tuple(int(r) for r in info.reduction()) if info is not None else ()
    if reductions != PYRAMID_REDUCTIONS:
        raise MaeDetError(
            f"the backbone must give features at strides {PYRAMID_REDUCTIONS} (C3..C5); "
            f"it gives {reductions or 'none'}."
        )
    return module


def _check_shape(num_classes: int, cls_channels: int, strides: Sequence[int], fpn_channels: int) -> None:
    """The head and neck shapes GFocalV2 can be built with; anything else is one sentence."""
    if num_classes < 1 or cls_channels not in (num_classes, num_classes + 1):
        raise MaeDetError(
            f"cls_channels must be num_classes or num_classes + 1, got {cls_channels} for {num_classes} classes."
        )
    if tuple(strides[:3]) != PYRAMID_REDUCTIONS or any(b != 2 * a for a, b in itertools.pairwise(strides)):
        raise MaeDetError(f"strides must start 8, 16, 32 and double at each level, got {tuple(strides)}.")
    if fpn_channels < 32 or fpn_channels % 32:
        raise MaeDetError(f"fpn_channels must be a multiple of 32 (GroupNorm's 32 groups), got {fpn_channels}.")


def _check_bins(reg_max: int) -> None:
    """The distribution head has ``reg_max + 1`` bins per box side (the authors use 16)."""
    if not 1 <= reg_max <= MAX_REG_MAX:
        raise MaeDetError(
            f"reg_max (box-side bins - 1) must be between 1 and {MAX_REG_MAX} (the authors use 16), got {reg_max!r}."
        )


class GFocalV2(nn.Module):
    """Backbone (C3..C5) → FPN (P3..P7) → GFocalV2 head; ``predict`` adds decoding and class-aware NMS.

    ``num_classes`` is the number of real classes (labels 0..num_classes-1). ``cls_channels`` is the head's class
    output width: the authors' checkpoints have ``num_classes + 1`` (their loss config makes mmdetection add a
    channel); the extra channel is scored and competes in NMS like the others, and its detections are dropped
    only after the per-image top ``max_per_img`` — as in their evaluation. Plain ``num_classes`` works too.
    Inputs are RGB, normalised with ``mean``/``std`` on the 0..1 scale (the authors' 0..255 values / 255), with
    H and W padded to a multiple of 32.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "maedet_m",
        *,
        num_classes: int = 80,
        cls_channels: int | None = None,
        fpn_channels: int = 256,
        stacked_convs: int = 4,
        reg_max: int = 16,
        reg_topk: int = 4,
        reg_channels: int = 64,
        add_mean: bool = True,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        postprocess_cfg: PostprocessConfig | None = None,
        pretrained_backbone: bool = False,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cls_channels = num_classes + 1 if cls_channels is None else cls_channels
        _check_shape(num_classes, cls_channels, strides, fpn_channels)
        _check_bins(reg_max)
        self.name = "gfl"  # the factory sets the registered name (maedet_m_gfl, ...)
        # what rebuilds this detector (a converted folder's config.json): the backbone by name, and the head's shape
        self.backbone_name = backbone if isinstance(backbone, str) else None
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.build_args: dict[str, Any] = {
            "num_classes": num_classes,
            "cls_channels": cls_channels,
            "fpn_channels": fpn_channels,
            "stacked_convs": stacked_convs,
            "reg_max": reg_max,
            "reg_topk": reg_topk,
            "reg_channels": reg_channels,
            "add_mean": add_mean,
            "strides": [int(s) for s in strides],
        }
        self.num_classes = num_classes
        self.cls_channels = cls_channels
        self.strides = tuple(int(s) for s in strides)
        self.postprocess_cfg = postprocess_cfg or PostprocessConfig()
        self.mean = tuple(IMAGENET_DEFAULT_MEAN)  # = the authors' (123.675, 116.28, 103.53) / 255, RGB
        self.std = tuple(IMAGENET_DEFAULT_STD)  # = (58.395, 57.12, 57.375) / 255

        self.backbone = create_backbone(backbone, pretrained_backbone, **dict(backbone_kwargs or {}))
        self.neck = Fpn(self.backbone.feature_info.channels(), fpn_channels, num_extra=len(self.strides) - 3)
        self.head = GFocalV2Head(
            fpn_channels,
            cls_channels,
            self.strides,
            fpn_channels,
            stacked_convs,
            reg_max,
            reg_topk,
            reg_channels,
            add_mean,
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.neck.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.head.init_weights()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of ``forward``'s outputs: ``scores_p3..p7`` then ``distances_p3..p7``."""
        levels = [f"p{s.bit_length() - 1}" for s in self.strides]
        return tuple(f"scores_{p}" for p in levels) + tuple(f"distances_{p}" for p in levels)

    def forward_levels(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: scores (B, cls_channels, H, W) and distances (B, 4, H, W) in input pixels."""
        return self.head(self.neck(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The raw outputs, flat (see ``output_names``): what an exported graph without NMS returns."""
        scores, distances = self.forward_levels(x)
        return (*scores, *distances)

    def forward_train(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: joint scores (B, C, H, W) and side logits (B, 4·(reg_max+1), H, W), as :func:`gfl_loss` takes."""
        return self.head.forward_train(self.neck(self.backbone(x)))

    def loss(
        self,
        images: torch.Tensor,
        targets: Sequence[Mapping[str, torch.Tensor]],
        pad_sizes: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The authors' training loss of a batch: ``loss_cls``, ``loss_bbox``, ``loss_dfl`` (0-dim, summed over levels).

        ``targets``: per image ``{"boxes": (N, 4) xyxy input pixels, "labels": (N,) in [0, num_classes)}``, N may be
        0. ``pad_sizes``: per image (h, w) of its extent padded to a multiple of 32 inside ``images`` (anchors beyond
        it are ignored); None = every image fills the whole tensor. Back-propagate the sum of the three terms.
        """
        height, width = images.shape[-2:]
        if pad_sizes is None:
            pad_sizes = [(height, width)] * images.shape[0]
        elif any(int(h) > height or int(w) > width for h, w in pad_sizes):
            raise MaeDetError(
                f"every pad size must fit the {height}×{width} batch, got {[tuple(p) for p in pad_sizes]}."
            )
        cls_scores, bbox_preds = self.forward_train(images)
        terms = gfl_loss(
            cls_scores, bbox_preds, targets, pad_sizes, self.strides, self.num_classes, reg_max=self.head.reg_max
        )
        return terms.sums()

    @torch.no_grad()
    def predict(
        self,
        x: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        cfg: PostprocessConfig | None = None,
    ) -> list[Detections]:
        """Detections per image, boxes (x1, y1, x2, y2) in input pixels, clamped before NMS to the whole input.

        ``image_sizes``: (height, width) of every image before padding, to clamp to those instead (the authors'
        rule). Without them the result equals an exported file with NMS inside, given the same input.
        """
        scores, distances = self.forward_levels(x)
        return postprocess(
            scores,
            distances,
            self.strides,
            self.num_classes,
            tuple(x.shape[-2:]),
            image_sizes,
            cfg or self.postprocess_cfg,
        )
