"""Named GFocalV2 detectors and their checkpoints: ``create_detector('maedet_m_gfl', checkpoint='latest.pth')``.

The authors published whole mmdetection detectors (backbone + FPN + GFocalV2 head, COCO). Their state dicts load
here exactly: every ``backbone.body.block_list.*``, ``neck.*`` and ``bbox_head.*`` key is mapped onto
:class:`~maedet.zoo.gfl.GFocalV2`, and anything missing, left over or of the wrong shape is named in one sentence.
mmdetection ResNet GFocalV2 checkpoints load into ``resnet50_gfl`` / ``resnet101_gfl`` the same way (their
backbone names are timm's), and our own state dicts load as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.memory import check_build_fits

from .checkpoint import (
    AUTHORS_TAG,
    AUTHORS_URL,
    KeyReport,
    cache_file_name,
    compare_keys,
    download_checkpoint,
    load_checkpoint,
    model_tensors,
)
from .detector_folder import (
    CONFIG_NAME,
    HUB_PREFIX,
    LOCAL_PREFIX,
    WEIGHTS_NAME,
    build_kwargs,
    hub_detector_folder,
    is_detector_folder,
    read_detector_config,
)
from .gfl import GFocalV2
from .gfl_postprocess import PostprocessConfig
from .maedet import _authors_to_ours

__all__ = ["DETECTORS", "DetectorSpec", "create_detector", "detector_state_dict", "list_detectors"]


@dataclass(frozen=True)
class DetectorSpec:
    """A named detector: its backbone, neck/head width, and the authors' COCO checkpoint if there is one."""

    backbone: str
    fpn_channels: int
    url: str | None = None
    published_ap: float | None = None  # COCO val box AP from the authors' README


DETECTORS: dict[str, DetectorSpec] = {
    "maedet_s_gfl": DetectorSpec("maedet_s", 192, AUTHORS_URL.format("s"), 45.1),
    "maedet_m_gfl": DetectorSpec("maedet_m", 256, AUTHORS_URL.format("m"), 46.9),
    "maedet_l_gfl": DetectorSpec("maedet_l", 256, AUTHORS_URL.format("l"), 47.8),
    "resnet50_gfl": DetectorSpec("resnet50", 256, None, 44.7),
    "resnet101_gfl": DetectorSpec("resnet101", 256, None, 46.3),
}
GENERIC_NAME = "gfl"  # any timm backbone: create_detector("gfl", backbone="convnext_tiny")


def list_detectors() -> list[str]:
    return [*DETECTORS, GENERIC_NAME]


# ------------------------------------------------------------------------------------------- key mapping
# The authors' neck and head names → ours (the backbone is handled by the backbone's own mapping).
_NECK_HEAD_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"neck.lateral_convs.\1."),
        (r"^bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.", r"head.\1_tower.\2.conv."),
        (r"^bbox_head\.(cls|reg)_convs\.(\d+)\.gn\.", r"head.\1_tower.\2.norm."),
        (r"^bbox_head\.gfl_cls\.", "head.cls_out."),
        (r"^bbox_head\.gfl_reg\.", "head.reg_out."),
        (r"^bbox_head\.scales\.(\d+)\.scale$", r"head.scales.\1.scale"),
        (r"^bbox_head\.reg_conf\.0\.", "head.quality.fc1."),
        (r"^bbox_head\.reg_conf\.2\.", "head.quality.fc2."),
        (r"^bbox_head\.integral\.project$", "head.integral.project"),
    )
)
_FPN_CONV = re.compile(r"^neck\.fpn_convs\.(\d+)\.conv\.(?P<rest>.+)$")
_CLASS_CONV_KEYS = ("bbox_head.gfl_cls.weight", "head.cls_out.weight")
_LATERAL_KEYS = ("neck.lateral_convs.0.conv.weight", "neck.lateral_convs.0.weight")


def _feature_key(key: str, children: set[str]) -> str:
    """A timm model key → its ``features_only`` key (flattened sequentials: ``stages.0.x`` → ``stages_0.x``)."""
    head, _, rest = key.partition(".")
    second, _, tail = rest.partition(".")
    flat = f"{head}_{second}"
    return f"{flat}.{tail}" if flat in children and tail else key


def _map_key(key: str, model: GFocalV2, children: set[str]) -> str | None:
    """Our name for one checkpoint key, or None when it belongs to no part of the detector."""
    if key.startswith("backbone.body.block_list."):  # the authors' MAE-DET (TinyNAS) backbone
        ours = _authors_to_ours(key[len("backbone.body.") :])
        return None if ours is None else "backbone." + _feature_key(ours, children)
    if key.startswith("backbone."):  # ours, or mmdetection's ResNet (its names are timm's)
        return "backbone." + _feature_key(key[len("backbone.") :], children)
    m = _FPN_CONV.match(key)
    if m:
        index, num_out = int(m[1]), len(model.neck.output_convs)
        part = f"output_convs.{index}" if index < num_out else f"extra_convs.{index - num_out}"
        return f"neck.{part}.{m['rest']}"
    for pattern, replacement in _NECK_HEAD_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    if key.startswith(("neck.", "head.")):  # already ours
        return key
    return None


def detector_state_dict(checkpoint: Mapping[str, Any], model: GFocalV2) -> dict[str, torch.Tensor]:
    """Map a whole-detector checkpoint (the authors' mmdetection layout, or ours) onto ``model``'s names, exactly.

    Raises MaeDetError naming the missing, unexpected and misshapen keys in one sentence.
    """
    state = model_tensors(checkpoint)
    children = {name for name, _ in model.backbone.named_children()}
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        ours = _map_key(key, model, children)
        if ours is None:
            unknown.append(key)
        else:
            mapped[ours] = value
    found = compare_keys(mapped, model.state_dict())
    sentence = KeyReport(found.missing, unknown + found.unexpected, found.misshapen).sentence(
        "the checkpoint does not fit this detector"
    )
    if sentence:
        raise MaeDetError(sentence)
    return mapped


def checkpoint_class_channels(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> int:
    """The class-output width of a detector checkpoint; a backbone-only checkpoint is refused in one sentence."""
    state = model_tensors(checkpoint)
    for key in _CLASS_CONV_KEYS:
        if key in state:
            return int(state[key].shape[0])
    if any(k.startswith(("backbone.", "block_list.", "stem.", "stages.")) for k in state):
        raise MaeDetError(
            f"{source} holds a backbone only (no detection head, e.g. no bbox_head.gfl_cls); load it into a "
            "backbone with timm.create_model(..., pretrained=True), or give a whole-detector checkpoint."
        )
    raise MaeDetError(f"{source} is not a GFocalV2 detector checkpoint (no bbox_head.gfl_cls or head.cls_out).")


def checkpoint_fpn_channels(checkpoint: Mapping[str, Any]) -> int | None:
    """The neck/head width of a detector checkpoint (its first lateral conv's outputs), None when absent."""
    state = model_tensors(checkpoint)
    for key in _LATERAL_KEYS:
        if key in state and state[key].dim() == 4:
            return int(state[key].shape[0])
    return None


def _class_channels(channels: int, num_classes: int, source: str) -> int:
    if channels not in (num_classes, num_classes + 1):
        raise MaeDetError(
            f"{source} has {channels} class channels, which does not fit num_classes={num_classes} "
            f"(a detector for {num_classes} classes has {num_classes} or {num_classes + 1})."
        )
    return channels


# ------------------------------------------------------------------------------------------- factory
def _build_within_memory(name: str, pretrained_backbone: bool, **kwargs: Any) -> GFocalV2:
    """GFocalV2 built for real only once its weights, counted on the meta device, are known to fit (issue 17)."""
    if not torch.empty(0).is_meta:  # not already inside a caller's meta-device estimate
        check_build_fits(lambda: GFocalV2(pretrained_backbone=False, **kwargs), f"detector {name!r}")
    return GFocalV2(pretrained_backbone=pretrained_backbone, **kwargs)


def _backbone_for(name: str, backbone: str | nn.Module | None, structure: Any) -> tuple[str | nn.Module, dict]:
    if name not in DETECTORS and name != GENERIC_NAME:
        raise MaeDetError(f"unknown detector {name!r}; choose one of {', '.join(list_detectors())}.")
    if name != GENERIC_NAME:
        if backbone is not None or structure is not None:
            raise MaeDetError(f"{name!r} has a fixed backbone; use create_detector('gfl', backbone=...) for others.")
        return DETECTORS[name].backbone, {}
    if structure is not None:
        if backbone not in (None, "maedet"):
            raise MaeDetError(f"a structure applies to the 'maedet' backbone, not to {backbone!r}.")
        return "maedet", {"structure": structure}
    if backbone is None:
        raise MaeDetError("detector 'gfl' needs backbone= (a timm model name or module) or structure=.")
    return backbone, {}


def _from_folder(
    folder: str | os.PathLike[str],
    name: str | None,
    num_classes: int | None,
    postprocess_cfg: PostprocessConfig | None,
    fixed: dict[str, Any],
) -> GFocalV2:
    """The detector of a converted folder (see :mod:`maedet.zoo.detector_folder`), checked against what was asked."""
    config = read_detector_config(folder)
    arch, shown = config["architecture"], str(folder)
    if name is not None and name != arch:
        raise MaeDetError(f"folder {shown!r} holds a {arch!r} detector, not {name!r}.")
    if num_classes is not None and num_classes != config["num_classes"]:
        raise MaeDetError(
            f"folder {shown!r} holds a detector for {config['num_classes']} classes, not num_classes={num_classes}."
        )
    given = sorted(k for k, v in fixed.items() if v is not None and v is not False)
    if given:
        raise MaeDetError(f"a converted folder fixes the architecture; leave out {', '.join(given)}.")
    kwargs = build_kwargs(config)
    if postprocess_cfg is not None:
        kwargs["postprocess_cfg"] = postprocess_cfg
    weights = load_checkpoint(Path(folder) / WEIGHTS_NAME)
    try:
        return create_detector(arch, checkpoint=weights, num_classes=config["num_classes"], **kwargs)
    except TypeError as exc:  # a hand-edited config.json with a value of the wrong type
        raise MaeDetError(f"the config.json of {shown!r} does not describe a detector ({exc}).") from None


def _folder_of(name: str) -> Path | None:
    """The folder a ``local-dir:`` or ``hf-hub:`` name refers to (the hub's is downloaded), else None."""
    if name.startswith(LOCAL_PREFIX):
        folder = Path(name[len(LOCAL_PREFIX) :])
    elif name.startswith(HUB_PREFIX):
        folder = hub_detector_folder(name[len(HUB_PREFIX) :])
    else:
        return None
    if not is_detector_folder(folder):
        if (folder / CONFIG_NAME).is_file():
            read_detector_config(folder)  # a config of something else: its own sentence says what
        raise MaeDetError(f"{name!r}: no converted detector there (no {folder / CONFIG_NAME}).")
    return folder


def _checkpoint_shape(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    num_classes: int,
    cls_channels: int | None,
    fpn_channels: int | None,
    spec: Any,
) -> tuple[Mapping[str, Any], int, int | None]:
    """The checkpoint's tensors, and the class-output and neck widths it fixes (checked against what was asked)."""
    where = "the checkpoint" if isinstance(checkpoint, Mapping) else f"checkpoint {Path(checkpoint).name}"
    state = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint(checkpoint)
    found = _class_channels(checkpoint_class_channels(state, where), num_classes, where)
    if cls_channels is not None and cls_channels != found:
        raise MaeDetError(f"{where} has {found} class channels, but cls_channels={cls_channels} was asked.")
    if spec is None and fpn_channels is None:  # the generic detector takes its width from the checkpoint
        fpn_channels = checkpoint_fpn_channels(state)
    return state, found, fpn_channels


def _authors_checkpoint(name: str, spec: Any) -> Path:
    """The authors' COCO detector file for ``name`` (downloaded once), or one sentence when there is none."""
    if spec is None or spec.url is None:
        raise MaeDetError(
            f"{name!r} has no published COCO weights here; give --checkpoint FILE (checkpoint=FILE in Python; "
            "an mmdetection GFocalV2 checkpoint loads) or, in Python, pretrained_backbone=True."
        )
    return download_checkpoint(spec.url, cache_file_name(spec.backbone, AUTHORS_TAG, spec.url))


def create_detector(
    name: str = "maedet_m_gfl",
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    *,
    backbone: str | nn.Module | None = None,
    structure: Any = None,
    fpn_channels: int | None = None,
    cls_channels: int | None = None,
    pretrained_backbone: bool = False,
    postprocess_cfg: PostprocessConfig | None = None,
    **kwargs: Any,
) -> GFocalV2:
    """A GFocalV2 detector by name, in eval mode, with the authors' or a given checkpoint if asked.

    ``pretrained=True`` downloads the authors' COCO detector (MAE-DET names only). ``checkpoint`` is a file
    (read safely: safetensors or ``weights_only``) or an already-loaded dict. The class-output width follows the
    checkpoint (the authors' have ``num_classes + 1``). ``pretrained_backbone`` loads timm's pretrained
    backbone weights into an otherwise untrained detector. Other keyword arguments go to :class:`GFocalV2`.
    A converted folder (``maedet-convert ... --model NAME_gfl``) loads as ``checkpoint=FOLDER``, or by itself as
    ``name='local-dir:FOLDER'`` / ``'hf-hub:USER/REPO'``; ``num_classes`` defaults to 80 or the folder's.
    """
    if name.startswith((LOCAL_PREFIX, HUB_PREFIX)) and (checkpoint is not None or pretrained):
        raise MaeDetError(f"{name!r} carries its own weights; leave out checkpoint= and pretrained=.")
    folder, asked_name = _folder_of(name), None
    if folder is None and is_detector_folder(checkpoint):  # checkpoint=FOLDER: the folder must hold `name`
        folder, asked_name = Path(checkpoint), name
    if folder is not None:
        fixed = {"backbone": backbone, "structure": structure, "fpn_channels": fpn_channels,
                 "cls_channels": cls_channels, "pretrained_backbone": pretrained_backbone, **kwargs}  # fmt: skip
        return _from_folder(folder, asked_name, num_classes, postprocess_cfg, fixed)
    num_classes = 80 if num_classes is None else num_classes
    source_backbone, backbone_kwargs = _backbone_for(name, backbone, structure)
    spec = DETECTORS.get(name)
    if pretrained and checkpoint is None:
        checkpoint = _authors_checkpoint(name, spec)
    state = None
    if checkpoint is not None:
        state, cls_channels, fpn_channels = _checkpoint_shape(checkpoint, num_classes, cls_channels, fpn_channels, spec)

    model = _build_within_memory(
        name,
        pretrained_backbone,
        backbone=source_backbone,
        num_classes=num_classes,
        cls_channels=cls_channels,
        fpn_channels=fpn_channels or (spec.fpn_channels if spec else 256),
        postprocess_cfg=postprocess_cfg,
        backbone_kwargs=backbone_kwargs,
        **kwargs,
    )
    model.name = name
    if state is not None:
        model.load_state_dict(detector_state_dict(state, model), strict=True)
    return model.eval()
