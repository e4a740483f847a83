"""The detector a run trains: built by name, initialised as the authors do, or from a backbone or detector checkpoint.

From scratch the backbone gets kaiming-normal convs (fan-out, ReLU gain) and BatchNorm weight 1 / bias 0; the FPN
and head keep the detector's own init (xavier-uniform FPN, N(0, 0.01) head with the focal prior bias).
``--backbone-checkpoint`` loads ImageNet weights into the backbone (any reference the other tools take);
``--init-from`` loads a whole trained detector, re-initialising a class head of another size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.zoo import create_detector, load_checkpoint, load_structure
from maedet.zoo.checkpoint import compare_keys, model_tensors, unwrap_state_dict
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX, build_kwargs, detector_config, hub_detector_folder
from maedet.zoo.detectors import _feature_key, detector_state_dict
from maedet.zoo.gfl import GFocalV2
from maedet.zoo.maedet import _authors_to_ours

__all__ = ["ModelSpec", "build_detector", "init_backbone_from_scratch", "plain_copy"]

LOGGER = logging.getLogger("maedet")
_CLASS_KEYS = ("head.cls_out.weight", "head.cls_out.bias", "bbox_head.gfl_cls.weight", "bbox_head.gfl_cls.bias")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "head_", "conv_head.", "global_pool.")


@dataclass(frozen=True)
class ModelSpec:
    """Which detector to build: a name, the generic detector's backbone or structure file, and its widths."""

    name: str = "maedet_s_gfl"
    structure: str | None = None
    backbone: str | None = None
    backbone_checkpoint: str | None = None
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plain_copy(detector: GFocalV2, state: dict[str, torch.Tensor] | None = None) -> GFocalV2:
    """The same detector rebuilt from its config (plain BatchNorm again after SyncBN), with ``state`` or its weights."""
    config = detector_config(detector)
    kwargs = build_kwargs(config)
    copy = create_detector(config["architecture"], num_classes=config["num_classes"], **kwargs)
    weights = detector.state_dict() if state is None else state
    copy.load_state_dict({k: v.detach().cpu() for k, v in weights.items()}, strict=True)
    return copy.eval()


def init_backbone_from_scratch(backbone: nn.Module) -> None:
    """The authors' MadNas init: kaiming-normal (fan-out, ReLU) on every conv, norm weight 1 and bias 0."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _structure(spec: ModelSpec) -> Any:
    if spec.structure is None:
        return None
    if spec.name != "gfl":
        raise MaeDetError(f"--structure builds the generic detector: use --model gfl, not {spec.name!r}.")
    return load_structure(spec.structure)


def _backbone_state(reference: str) -> dict[str, torch.Tensor]:
    """Backbone tensors from a file, a folder or a timm reference (``name.tag``, ``local-dir:``, ``hf-hub:``)."""
    from maedet.export.model_reference import parse_model_reference

    if Path(reference).is_file():
        checkpoint = load_checkpoint(reference)
    else:
        ref = parse_model_reference(reference)
        if ref.folder is not None:
            checkpoint = load_checkpoint(ref.folder)
        else:
            import timm

            checkpoint = timm.create_model(ref.create_name, pretrained=True).state_dict()
    state, _ = unwrap_state_dict(checkpoint)
    return {(_authors_to_ours(k) or k) if k.startswith("block_list.") else k: v for k, v in state.items()}


def load_backbone_weights(model: GFocalV2, reference: str) -> None:
    """Every backbone tensor from ``reference`` (a classifier head there is left out); a misfit is one sentence."""
    children = {name for name, _ in model.backbone.named_children()}
    state = {_feature_key(k, children): v for k, v in _backbone_state(reference).items()}
    expected = model.backbone.state_dict()
    kept = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    sentence = compare_keys(kept, expected).sentence(f"--backbone-checkpoint {reference} does not fit the backbone")
    if sentence:
        raise MaeDetError(sentence)
    model.backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
    LOGGER.info("backbone weights loaded from %s (%d tensors)", reference, len(expected))


def _detector_checkpoint(reference: str) -> Mapping[str, Any]:
    if reference.startswith(LOCAL_PREFIX):
        return load_checkpoint(reference[len(LOCAL_PREFIX) :])
    if reference.startswith(HUB_PREFIX):
        return load_checkpoint(hub_detector_folder(reference[len(HUB_PREFIX) :]))
    return load_checkpoint(reference)


def load_detector_weights(model: GFocalV2, reference: str) -> None:
    """A trained detector's weights; a class head of another size keeps this model's fresh init (and says so)."""
    state = model_tensors(_detector_checkpoint(reference))
    own = model.state_dict()
    resized = [k for k in _CLASS_KEYS if k in state and state[k].shape[0] != model.cls_channels]
    for key in resized:  # this model's fresh class head, under our name
        ours = key.replace("bbox_head.gfl_cls.", "head.cls_out.")
        state[ours] = own[ours]
        if key != ours:
            del state[key]
    mapped = detector_state_dict(state, model)
    model.load_state_dict(mapped, strict=True)
    if resized:
        LOGGER.warning(
            "the class head of %s has another number of classes: it is re-initialised for %d classes",
            reference,
            model.num_classes,
        )
    LOGGER.info("detector weights loaded from %s", reference)


def build_detector(
    spec: ModelSpec, num_classes: int, fpn_channels: int | None = None, stacked_convs: int = 4
) -> GFocalV2:
    """The detector to train, in train mode, initialised from scratch or from the given weights."""
    kwargs: dict[str, Any] = {"stacked_convs": stacked_convs, "cls_channels": num_classes}
    if fpn_channels is not None:
        kwargs["fpn_channels"] = fpn_channels
    structure = _structure(spec)
    if spec.name == "gfl":
        kwargs["structure"] = structure
        kwargs["backbone"] = spec.backbone
    elif spec.backbone is not None:
        raise MaeDetError(f"--backbone builds the generic detector: use --model gfl, not {spec.name!r}.")
    model = create_detector(spec.name, num_classes=num_classes, **kwargs)
    if spec.init_from is not None:
        load_detector_weights(model, spec.init_from)
    elif spec.backbone_checkpoint is not None:
        load_backbone_weights(model, spec.backbone_checkpoint)
    else:
        init_backbone_from_scratch(model.backbone)
    return model.train()
