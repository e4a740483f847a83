"""MAE-DET backbones (Sun et al., ICML 2022) as timm models.

Any :class:`~maedet.zoo.structure.Structure` builds into :class:`MaeDet`: a k×k conv-BN-ReLU stem, then stages of
bottleneck residual blocks (1×1 reduce, k×k, 1×1 expand; block 0 of every stage has an avgpool + 1×1 conv-BN
projection shortcut). ``maedet_s/m/l`` are the published structures; ``maedet`` takes any structure.

The weights the authors published are mmdetection GFLV2 checkpoints; ``checkpoint_filter_fn`` maps them (and
the bare TinyNAS layout, and our own) onto this module exactly, so ``pretrained=True`` loads them through timm.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    checkpoint_seq,
    generate_default_cfgs,
    register_model,
    resolve_pretrained_cfg,
)

from maedet.errors import MaeDetError
from maedet.memory import check_weights_fit

from .checkpoint import (
    AUTHORS_TAG,
    AUTHORS_URL,
    BACKBONE_PREFIXES,
    DETECTOR_PARTS,
    cache_file_name,
    check_number_kinds,
    check_tensors,
    classifier_classes,
    compare_keys,
    download_checkpoint,
    load_checkpoint,
    model_tensors,
    preview,
)
from .cost import param_count
from .model_args import check_model_args
from .structure import Stage, Structure, builtin_structure, load_structure
from .timm_private import feature_take_indices

__all__ = ["MaeDet", "checkpoint_filter_fn", "fuse_bn"]

_logger = logging.getLogger(__name__)


class ConvBnAct(nn.Module):
    """Conv (no bias, 'same' padding for odd kernels) → BN → optional ReLU; ``fuse()`` folds the BN away."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> ConvBnAct:
        """Fold BN into the conv (eval statistics); timm's ``reparameterize_model`` calls this."""
        if isinstance(self.bn, nn.Identity):
            return self
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
        self.conv, self.bn = fused, nn.Identity()
        return self


class Bottleneck(nn.Module):
    """One residual block: ReLU(1×1 → k×k (strided) → 1×1  +  shortcut); ``drop_path`` is stochastic depth."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        bottleneck_chs: int,
        kernel_size: int,
        stride: int,
        project: bool,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_chs, bottleneck_chs, 1)
        self.conv2 = ConvBnAct(bottleneck_chs, bottleneck_chs, kernel_size, stride)
        self.conv3 = ConvBnAct(bottleneck_chs, out_chs, 1, act=False)
        # The authors project on block 0 of every stage, even when in == out. Ceil mode without the padding in the
        # average keeps the shortcut the same size as the strided conv at odd sizes (and identical at even ones).
        self.downsample = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
        self.shortcut = ConvBnAct(in_chs, out_chs, 1, act=False) if project else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        """Start the residual branch at zero: the block begins as its shortcut."""
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(self.downsample(x))
        return self.act(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + shortcut)


class MaeDetStage(nn.Module):
    """``depth`` bottleneck blocks; only block 0 strides and projects."""

    def __init__(self, spec: Stage, drop_path_rates: list[float] | None = None) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(
            *(
                Bottleneck(
                    spec.in_chs if i == 0 else spec.out_chs,
                    spec.out_chs,
                    spec.bottleneck_chs,
                    spec.kernel_size,
                    spec.stride if i == 0 else 1,
                    project=i == 0,
                    drop_path=drop_path_rates[i] if drop_path_rates else 0.0,
                )
                for i in range(spec.depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MaeDet(nn.Module):
    """A MAE-DET backbone built from a Structure, with timm's classification/feature interface."""

    def __init__(
        self,
        structure: Structure | Mapping[str, Any] | str | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        output_stride: int = 32,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if structure is None:
            raise MaeDetError("MaeDet needs a structure: a Structure, a dict, a built-in name or a file path.")
        if output_stride != 32:
            raise MaeDetError("MaeDet supports output_stride=32 only (no dilated variant).")
        self.structure = load_structure(structure).with_in_chans(in_chans)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        s = self.structure
        self.stem = ConvBnAct(s.stem.in_chs, s.stem.out_chs, s.stem.kernel_size, s.stem.stride)
        rates = _drop_path_rates(drop_path_rate, [spec.depth for spec in s.stages])
        self.stages = nn.Sequential(*(MaeDetStage(spec, r) for spec, r in zip(s.stages, rates, strict=True)))
        self.num_features = self.head_hidden_size = s.num_features
        self.feature_info = [
            dict(
                num_chs=p.num_chs,
                reduction=p.reduction,
                module="stem" if p.block_index == 0 else f"stages.{p.block_index - 1}",
            )
            for p in s.feature_points()
        ]
        self._feature_blocks = [p.block_index for p in s.feature_points()]  # 0 = stem, i = stages[i - 1]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool = True) -> None:
        """Kaiming convs; with ``zero_init_last`` every residual branch starts at zero (as timm's ResNet does), so
        a fresh model's activations stay small enough for fp16 (without it MAE-DET-L's C5 reaches ~8e5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the detection features (C2..C5, as ``feature_info``) picked by ``indices``.

        ``indices``: the last n features if an int, all if None, else those positions. ``norm`` is accepted for
        the common signature (the backbone has no final norm). ``stop_early`` skips the stages after the last
        feature asked for.
        """
        if output_fmt != "NCHW":
            raise MaeDetError(f"forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self._feature_blocks), indices)
        take_blocks = {self._feature_blocks[i] for i in take_indices}
        stages = self.stages[: self._feature_blocks[max_index]] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        if 0 in take_blocks:
            intermediates.append(x)
        for block_index, stage in enumerate(stages, start=1):
            x = stage(x)
            if block_index in take_blocks:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last feature in ``indices`` (and the classifier); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self._feature_blocks), indices)
        self.stages = self.stages[: self._feature_blocks[max_index]]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _drop_path_rates(rate: float, depths: list[int]) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (timm's rule)."""
    total = sum(depths)
    rates = [rate * i / max(total - 1, 1) for i in range(total)]
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[start : start + depth] for start, depth in zip(starts, depths, strict=True)]


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The deploy form: every BN folded into its conv (eval mode). Works on a model or its features_only wrap."""
    from timm.models import reparameterize_model

    return reparameterize_model(model, inplace=inplace).eval()


# ------------------------------------------------------------------------------------------- checkpoints
_AUTHORS_KEY = re.compile(
    r"^block_list\.(?P<stage>\d+)\.block_list\.(?P<block>\d+)\.(?P<part>conv1|conv2|conv3|residual_proj)"
    r"\.(?P<layer>conv1|bn1)\.(?P<rest>.+)$"
)
_AUTHORS_STEM_KEY = re.compile(r"^block_list\.0\.(?P<layer>conv1|bn1)\.(?P<rest>.+)$")
_LAYER = {"conv1": "conv", "bn1": "bn"}
_PART = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "residual_proj": "shortcut"}


def _authors_to_ours(key: str) -> str | None:
    """Map one authors' (TinyNAS) key to ours; None if it is not a backbone key of that layout."""
    m = _AUTHORS_STEM_KEY.match(key)
    if m:
        return f"stem.{_LAYER[m['layer']]}.{m['rest']}"
    m = _AUTHORS_KEY.match(key)
    if m:
        stage = int(m["stage"]) - 1
        return f"stages.{stage}.blocks.{m['block']}.{_PART[m['part']]}.{_LAYER[m['layer']]}.{m['rest']}"
    return None


def _ours(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every backbone and classifier tensor under this model's names (a detector's neck and head dropped), and the
    keys that belong to neither (named by the caller)."""
    out: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in state_dict.items():
        bare = key
        for prefix in BACKBONE_PREFIXES:
            if bare.startswith(prefix):
                bare = bare[len(prefix) :]
                break
        if bare.startswith(("stem.", "stages.", "head.")):  # ours, bare or under one of the accepted prefixes
            out[bare] = value
            continue
        mapped = _authors_to_ours(bare) if bare.startswith("block_list.") else None
        if mapped is not None:
            out[mapped] = value
        elif bare.startswith("block_list.") or key.startswith("backbone.body."):
            raise MaeDetError(f"checkpoint: backbone key {key!r} is not part of a MAE-DET backbone.")
        elif not key.startswith(DETECTOR_PARTS):
            foreign.append(key)  # a detector's neck and head are dropped by design; anything else is named
    return out, foreign


def _fit_classifier(out: dict[str, torch.Tensor], model: nn.Module) -> None:
    """A checkpoint's classifier loads into a model with a classifier of the same shape; a model built without one
    (``num_classes=0``, the backbone default) leaves it out, saying so; any other shape is one sentence."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    found = sorted(k for k in out if k.startswith("head."))
    if found and not any(k in expected for k in found):
        classes = out["head.fc.weight"].shape[0] if "head.fc.weight" in out else "?"
        _logger.warning(
            "the checkpoint's %s-class classifier (%s) is left out: this model has none; pass num_classes=%s to "
            "keep it.",
            classes,
            ", ".join(found),
            classes,
        )
        for key in found:
            del out[key]
        return
    wrong = [f"{k} {tuple(out[k].shape)} vs model {tuple(expected[k].shape)}" for k in found
             if k in expected and out[k].shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise MaeDetError(f"checkpoint's classifier does not fit this model: {preview(wrong, 6)}.")


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert an authors' mmdetection checkpoint, a bare TinyNAS state dict, or ours, to this model's names.

    The checkpoint is unwrapped by the one checkpoint reader's rule (``state_dict``/``model`` containers, DDP's
    ``module.`` prefix). Neck and head keys of the detector are dropped. The result must cover every backbone
    tensor of ``model`` exactly: a missing, unexpected or misshapen backbone key raises a MaeDetError (a
    ValueError) that names the keys.
    """
    out, foreign = _ours(model_tensors(state_dict))
    _fit_classifier(out, model)
    _check_backbone_keys(out, model)
    if foreign:
        raise MaeDetError(
            f"checkpoint has {len(foreign)} keys that are no part of a MAE-DET backbone or of its detector "
            f"({preview(foreign)}); remove them, or check that this is the right file."
        )
    check_number_kinds(out, model)
    return out


def _check_backbone_keys(out: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """The mapped keys cover every backbone tensor of ``model`` exactly, with the model's shapes (the stem's first
    conv may differ in shape: timm adapts its input channels)."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    got = {k: v for k, v in out.items() if not k.startswith("head.")}
    sentence = compare_keys(got, expected, any_shape=("stem.conv.weight",)).sentence(
        "checkpoint does not match this structure's backbone"
    )
    if sentence:
        raise MaeDetError(sentence)


# ------------------------------------------------------------------------------------------- factory
def _download_pretrained(variant: str, kwargs: dict[str, Any]) -> None:
    """Fetch a url-sourced checkpoint through the one download path and point timm at that file.

    timm would cache all three of the authors' files under one name (each is ``latest.pth``); and without network
    its download ends in a long traceback. :func:`~.checkpoint.download_checkpoint` names the file by model and tag
    (the detector of the same size shares it) and says in one sentence how to load a local copy instead.
    """
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if cfg.source in ("hf-hub", "local-dir") or cfg.file or cfg.state_dict is not None or cfg.hf_hub_id or not cfg.url:
        return  # timm loads these itself
    name = cache_file_name(str(cfg.architecture), str(cfg.tag), cfg.url)
    path = download_checkpoint(cfg.url, name, cache_dir=kwargs.get("cache_dir"))
    kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}


def _user_weights(cfg: PretrainedCfg) -> tuple[Mapping[str, Any], str] | None:
    """The weights the caller gave (a file, a ``local-dir:`` folder, or a state dict), read and checked here."""
    if cfg.state_dict is not None:
        check_tensors(cfg.state_dict, "given as state_dict")
        return cfg.state_dict, "the given state_dict"
    if cfg.file and cfg.source != "hf-hub":
        return load_checkpoint(cfg.file), f"checkpoint {Path(cfg.file).name}"
    return None


def _load_user_weights(variant: str, kwargs: dict[str, Any]) -> bool:
    """Route the caller's own weights through our checkpoint reader; True when there were any.

    timm would read an overlay ``file`` with its own loader (which refuses the numpy scalars training frameworks
    keep in ``meta``), fall back to downloading the default weights when a state dict is empty, and replace a
    trained classifier with a random one when ``num_classes`` differs from the config's. Here the weights become
    a checked state dict that never leads to a download, and the model keeps their classifier: ``num_classes``
    defaults to theirs, 0 drops it, and any other count is refused.
    """
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=overlay)
    found = _user_weights(cfg)
    if found is None:
        return False
    state, name = found
    overlay.update(state_dict=state, file=None, url="", hf_hub_id=None, source="")
    if "num_classes" not in overlay:  # a caller that declares the weights' class count (the exporter) is believed
        classes, asked = classifier_classes(state), kwargs.get("num_classes")
        if classes and asked not in (None, 0, classes):
            raise MaeDetError(
                f"{name} has a trained {classes}-class classifier, but num_classes={asked} was asked; pass "
                f"num_classes={classes} to keep it, or num_classes=0 for none (a new classifier is never silent)."
            )
        overlay["num_classes"] = classes
    kwargs["pretrained_cfg_overlay"] = overlay
    return True


def _create_maedet(variant: str, pretrained: bool = False, **kwargs: Any) -> MaeDet:
    folder_args = kwargs.get("pretrained_model_args")
    if folder_args:  # what timm took from a local-dir: or hf-hub: folder's config.json
        check_model_args(folder_args, "the folder's config.json")
    if pretrained and not _load_user_weights(variant, kwargs):
        _download_pretrained(variant, kwargs)
    structure = load_structure(kwargs["structure"]) if "structure" in kwargs else builtin_structure(variant)
    kwargs["structure"] = structure  # parsed once, here
    classes = kwargs.get("num_classes", 1000)
    classes = classes if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0 else 0
    check_weights_fit(4 * param_count(structure, classes), f"the {variant} backbone")  # float32, before timm builds
    num_features = len(structure.feature_points())
    if kwargs.get("features_only"):
        _check_out_indices(variant, kwargs.get("out_indices"), num_features)
    return build_model_with_cfg(
        MaeDet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_features))),
        **kwargs,
    )


def _check_out_indices(variant: str, out_indices: Any, num_features: int) -> None:
    """timm's ``out_indices`` for this structure's feature levels, or one sentence naming the valid ones (timm
    itself ends in a bare IndexError); an int ``n`` means the last ``n`` levels, as in timm."""
    if out_indices is None:
        return
    valid = f"{variant} has {num_features} feature levels: indices 0..{num_features - 1} (or -{num_features}..-1)"
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= num_features:
            raise MaeDetError(f"out_indices={out_indices} asks for that many last levels; {valid}.")
        return
    items = list(out_indices) if isinstance(out_indices, (list, tuple)) else [out_indices]
    bad = [i for i in items if isinstance(i, bool) or not isinstance(i, int) or not -num_features <= i < num_features]
    if bad or not items:
        raise MaeDetError(f"out_indices {tuple(items)} names no such level ({', '.join(map(repr, bad))}); {valid}.")


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 0,
        "input_size": (3, 640, 640),
        "pool_size": (20, 20),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


def _coco_cfg(size: str) -> dict[str, Any]:
    return _cfg(
        url=AUTHORS_URL.format(size),
        paper_ids="arXiv:2111.13336",
        paper_name="MAE-DET: Revisiting Maximum Entropy Principle in Zero-Shot NAS for Efficient Object Detection",
        origin_url="https://github.com/alibaba/lightweight-neural-architecture-search",
        notes=("Backbone of the authors' GFLV2 COCO detector, trained from scratch; neck and head dropped.",),
    )


default_cfgs = generate_default_cfgs(
    {
        f"maedet_s.{AUTHORS_TAG}": _coco_cfg("s"),
        f"maedet_m.{AUTHORS_TAG}": _coco_cfg("m"),
        f"maedet_l.{AUTHORS_TAG}": _coco_cfg("l"),
        "maedet": _cfg(),
    }
)


@register_model
def maedet_s(pretrained: bool = False, **kwargs: Any) -> MaeDet:
    """MAE-DET-S: 21.2M params, 45.1 AP with GFLV2 on COCO (published)."""
    return _create_maedet("maedet_s", pretrained, **kwargs)


@register_model
def maedet_m(pretrained: bool = False, **kwargs: Any) -> MaeDet:
    """MAE-DET-M: 25.8M params, 46.9 AP with GFLV2 on COCO (published)."""
    return _create_maedet("maedet_m", pretrained, **kwargs)


@register_model
def maedet_l(pretrained: bool = False, **kwargs: Any) -> MaeDet:
    """MAE-DET-L: 43.9M params, 47.8 AP with GFLV2 on COCO (published)."""
    return _create_maedet("maedet_l", pretrained, **kwargs)


@register_model
def maedet(pretrained: bool = False, **kwargs: Any) -> MaeDet:
    """Any structure: ``timm.create_model('maedet', structure='best.json')`` (searched backbones)."""
    if kwargs.get("structure") is None:
        raise MaeDetError("timm.create_model('maedet', ...) needs structure=<Structure, dict, or path to a file>.")
    return _create_maedet("maedet", pretrained, **kwargs)
