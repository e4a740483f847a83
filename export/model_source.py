"""Resolve what the user names (a timm model, a structure file, a checkpoint) into the module that gets exported.

The exported module is always the deploy form: eval mode, every BN folded into its conv, returning a tuple of
named outputs (``c2``..``c5`` for feature maps, ``logits`` for the classifier output). The bench measures exactly
this module, so the rules for building it (the C2..C5 levels, which names are MAE-DET models, the input sizes a
network accepts) live here once.

Weights load strictly, whatever the model (MAE-DET or any timm model, feature extractor or classifier): every
tensor of the exported module must come from the checkpoint, and every backbone tensor of the checkpoint must find
its place. Only classifier keys are set aside when the export has no classifier, and that is logged by name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

import maedet.zoo  # noqa: F401  (registers the maedet models with timm)
from maedet.errors import MaeDetError
from maedet.hub import offline_sentence, offline_when_unreachable
from maedet.zoo import Structure, fuse_bn, load_structure
from maedet.zoo.checkpoint import (
    check_number_kinds,
    load_checkpoint,
    load_error_keys,
    mismatch_sentence,
    unwrap_state_dict,
)
from maedet.zoo.structure import BUILTIN_NAMES

from .errors import ExportError, first_line
from .model_reference import ModelReference, parse_model_reference, reference_structure

__all__ = [
    "DETECTION_STRIDES",
    "ModelSource",
    "TupleOutputs",
    "create_model",
    "detection_out_indices",
    "is_maedet_name",
    "load_checkpoint_state",
    "parse_model_reference",
    "resolve_model",
    "validate_input_size",
]

# The feature pyramid a detector neck expects: C2..C5 at strides 4, 8, 16, 32.
DETECTION_STRIDES = (4, 8, 16, 32)
LOGGER = logging.getLogger(__name__)
# Largest input side: 4× the authors' 1333-pixel test scale, far below what exhausts memory at batch 1.
MAX_INPUT_SIDE = 8192


class TupleOutputs(nn.Module):
    """Always return a tuple, so the ONNX graph has one named output per tensor whatever the inner model returns."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(x)
        if isinstance(out, Mapping):
            return tuple(out.values())
        if isinstance(out, (list, tuple)):
            return tuple(out)
        return (out,)


@dataclass
class ModelSource:
    """The deploy-form module plus everything the ONNX metadata needs to describe it."""

    module: nn.Module
    model_name: str
    output_names: tuple[str, ...]
    strides: tuple[int, ...]  # one per output; 0 for logits (no spatial stride)
    structure: Structure | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int
    size_multiple: int  # the network's largest stride: the smallest input H and W
    outputs: str  # "features" or "logits"


def is_maedet_name(name: str) -> bool:
    """True for the MAE-DET timm names: ``maedet`` (with a structure) and ``maedet_s/m/l``."""
    return name == "maedet" or name.startswith("maedet_")


def load_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load weights without executing code (the zoo's safe loader: safetensors or ``weights_only=True``).

    ``path`` is a file or a converted folder (config.json + model.safetensors)."""
    try:
        return load_checkpoint(path)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def create_model(
    name: str | ModelReference,
    *,
    state: dict[str, Any] | None = None,
    weights_name: str = "the checkpoint",
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` for any model reference, whose refusals are one sentence; ``state`` loads strictly.

    ``name`` is anything :func:`parse_model_reference` takes. With ``state`` the model's own ``filter_fn`` maps the
    keys (timm's loading path), and the result must fit the whole model (see :func:`_create_with_weights`);
    ``weights_name`` names the weights in messages. A folder's own weights are not loaded here: pass them as ``state``.
    With ``pretrained=True`` timm's own pretrained weights load, and a failed download is one sentence.
    """
    ref = name if isinstance(name, ModelReference) else parse_model_reference(name)
    kwargs = {**ref.create_kwargs(), **kwargs}
    if kwargs.get("pretrained"):
        return _create_pretrained(ref.create_name, kwargs)
    if state is not None:
        return _create_with_weights(ref, state, weights_name, kwargs)
    try:
        return timm.create_model(ref.create_name, **kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"cannot build model {ref.text!r}: {_one_line(exc)[:300]}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _create_with_weights(
    ref: ModelReference, state: dict[str, Any], weights_name: str, kwargs: dict[str, Any]
) -> nn.Module:
    """Build the model with these weights, loaded strictly.

    timm loads a feature extractor's weights (and a classifier's whose class count differs) without checking the
    keys, so random weights could pass for trained ones. Here a feature extractor is built without a classifier,
    the weights are declared to have the model's class count, and timm's load stays strict (it happens on the
    whole model, before timm wraps it as a feature extractor). Classifier keys of the checkpoint are set aside when
    the model has no classifier; what was set aside is logged by name once the weights have loaded.
    """
    if kwargs.get("features_only"):
        kwargs = {**kwargs, "num_classes": 0}
    tensors, num_classes, notes = _backbone_tensors(ref, state, kwargs.get("num_classes"))
    model = _load_strictly(ref, tensors, weights_name, {**kwargs, "num_classes": num_classes})
    check_number_kinds(tensors, model)  # same-named tensors (a remapped layout is checked by the model's filter)
    for note in notes:
        LOGGER.info("%s: %s", weights_name, note)
    return model


def _backbone_tensors(
    ref: ModelReference, state: dict[str, Any], num_classes: int | None
) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """The checkpoint's tensors for this model, the model's class count, and notes on the keys left out (a
    detector's neck and head; a classifier the model is built without)."""
    tensors, outside = unwrap_state_dict(state)
    notes = []
    if outside:
        groups = sorted({key.split(".", 1)[0] for key in outside})
        notes.append(f"left out {len(outside)} keys outside the backbone ({', '.join(groups)})")
    cfg = ref.pretrained_cfg
    if cfg is None:
        registered = timm.models.get_pretrained_cfg(ref.create_name)
        cfg = registered.to_dict() if registered is not None else {}
    classifiers = cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    head = sorted(key for key in tensors if prefixes and key.startswith(prefixes))
    if num_classes is None:  # the weights' own classifier, if they have one, else the model's default
        heads = [tensors[key] for key in head if key.endswith(".weight") and tensors[key].ndim == 2]
        num_classes = int(heads[0].shape[0]) if heads else int(cfg.get("num_classes", 1000))
    if head and num_classes == 0:
        notes.append(
            f"skipped {len(head)} classifier keys ({', '.join(head)}): the model is built without a classifier"
        )
        tensors = {key: value for key, value in tensors.items() if key not in head}
    return tensors, num_classes, notes


def _load_strictly(
    ref: ModelReference, tensors: dict[str, torch.Tensor], weights_name: str, kwargs: dict[str, Any]
) -> nn.Module:
    """timm's loading path (the model's key mapping included), strict: timm relaxes it only when the class count
    differs from the weights', so the weights are declared to have the model's class count."""
    lead = f"{weights_name} does not fit model {ref.text!r}"
    if not tensors:  # an empty state dict would make timm fall back to its default weights (a download)
        raise ExportError(f"{lead}: it holds none of the model's tensors.")
    overlay = dict(state_dict=tensors, source="", file=None, url="", hf_hub_id=None, num_classes=kwargs["num_classes"])
    try:
        return timm.create_model(ref.create_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as exc:
        keys = load_error_keys(exc)
        sentence = mismatch_sentence(lead, *keys) if keys else None
        raise ExportError(sentence or f"{lead}: {_one_line(exc)[:300]}") from None
    except MaeDetError as exc:  # our own key mapping's sentence (MAE-DET), whole
        raise ExportError(f"{lead}: {_one_line(exc)}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a model's key mapping meeting foreign keys
        raise ExportError(f"{lead}: {_one_line(exc)[:300]}") from None


def _create_pretrained(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained weights for ``name``, refused in one sentence when there are none or they cannot be had."""
    cfg = timm.models.get_pretrained_cfg(name)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if cfg is None or not any(overlay.get(k) or getattr(cfg, k, None) for k in ("url", "file", "hf_hub_id")):
        raise ExportError(f"model {name!r} has no pretrained weights in timm; give a checkpoint (--checkpoint FILE).")
    file = overlay.get("file")
    if file and not Path(file).exists():  # timm raises a FileNotFoundError with no message
        raise ExportError(f"the weights file {str(file)!r} (pretrained_cfg_overlay) does not exist.")
    hub_id = None if file else overlay.get("hf_hub_id") or getattr(cfg, "hf_hub_id", None)
    with offline_when_unreachable() if hub_id else contextlib.nullcontext() as offline:
        try:
            return timm.create_model(name, **kwargs)
        except OSError as exc:  # URLError, HTTPError, huggingface_hub's errors, a missing local file
            if offline is not None:
                missing = offline_sentence(f"hf-hub:{hub_id}", offline)
                raise ExportError(
                    f"could not load the pretrained weights of {name!r}: {missing}; download them where there is "
                    "network and give the file with --checkpoint FILE."
                ) from None
            raise ExportError(
                f"could not load the pretrained weights of {name!r} ({first_line(exc, 160)}); download them where "
                "there is network and give the file with --checkpoint FILE (or pretrained_cfg_overlay=dict(file=...))."
            ) from None
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # the zoo's download sentence is a ValueError
            raise ExportError(f"cannot load the pretrained weights of {name!r}: {first_line(exc, 300)}") from None


def detection_out_indices(feature_module: nn.Module, name: str) -> tuple[int, ...]:
    """timm ``out_indices`` of the last feature map at each of strides 4, 8, 16, 32 (C2..C5)."""
    reductions = list(feature_module.feature_info.reduction())
    indices = list(feature_module.feature_info.out_indices)
    picked = []
    for stride in DETECTION_STRIDES:
        hits = [i for i, r in zip(indices, reductions, strict=True) if r == stride]
        if not hits:
            raise ExportError(
                f"model {name!r} has no feature map at stride {stride} (it has strides {reductions}), so it "
                "cannot serve as a C2..C5 detection backbone; choose other levels with out_indices."
            )
        picked.append(hits[-1])
    return tuple(picked)


def _feature_names(strides: Sequence[int]) -> tuple[str, ...]:
    """``c{log2(stride)}`` names (c2..c5); positional names if strides repeat or are not powers of two."""
    names = [f"c{int(math.log2(s))}" if s > 0 and s & (s - 1) == 0 else "" for s in strides]
    if "" in names or len(set(names)) != len(names):
        return tuple(f"f{i}" for i in range(len(strides)))
    return tuple(names)


def _reference(name: str, structure: Any) -> tuple[ModelReference, Structure | None]:
    """The reference to build and its MAE-DET structure (a structure file applies to MAE-DET names only)."""
    ref = parse_model_reference(name)
    if structure is None:
        if ref.architecture == "maedet" and ref.folder is None:
            raise ExportError("model 'maedet' needs a structure (--structure FILE, or structure= in Python).")
        return ref, reference_structure(ref)
    if ref.folder is not None:
        raise ExportError(f"{name!r} has its own structure (in its config.json); leave out the structure file.")
    if not is_maedet_name(ref.architecture):
        raise ExportError(f"a structure file only applies to MAE-DET models, not to {name!r}.")
    try:
        parsed = load_structure(structure)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    return ModelReference(name, "maedet", "maedet", model_args={"structure": parsed}), parsed


def _weights(ref: ModelReference, checkpoint: str | os.PathLike[str] | None) -> tuple[dict[str, Any] | None, str]:
    """The weights to load and their name in messages: the checkpoint if given, else a folder's own weights."""
    if checkpoint is not None:
        if ref.folder is not None:
            LOGGER.info("loading %s instead of the weights in %s", checkpoint, ref.text)
        return load_checkpoint_state(checkpoint), f"checkpoint {os.path.basename(os.fspath(checkpoint))}"
    if ref.folder is not None:
        return load_checkpoint_state(ref.folder), f"the weights in {ref.text}"
    return None, "the checkpoint"


def _features_module(
    ref: ModelReference,
    weights: tuple[dict[str, Any] | None, str],
    out_indices: Sequence[int] | None,
    pretrained: dict[str, Any] | None = None,
) -> nn.Module:
    """The features_only model at ``out_indices``, by default C2..C5 (a probe without weights picks them).

    ``pretrained`` holds timm's ``pretrained`` arguments, which only the final model gets.
    """
    state, weights_name = weights
    pretrained = pretrained or {}
    final = dict(state=state, weights_name=weights_name, features_only=True, **pretrained)
    if out_indices is not None:
        return create_model(ref, out_indices=tuple(out_indices), **final)
    probe = create_model(ref, features_only=True)
    picked = detection_out_indices(probe, ref.text)
    if picked == tuple(probe.feature_info.out_indices) and state is None and not pretrained:
        return probe
    del probe
    return create_model(ref, out_indices=picked, **final)


def _resolve_name(
    name: str,
    structure: Any,
    checkpoint: str | os.PathLike[str] | None,
    outputs: str,
    out_indices: Sequence[int] | None,
    num_classes: int | None,
    pretrained: dict[str, Any] | None = None,
) -> tuple[nn.Module, str, Structure | None, tuple[int, ...]]:
    """Build the (not yet fused) module for a model reference; returns (module, name, structure, strides)."""
    ref, struct = _reference(name, structure)
    weights = _weights(ref, checkpoint)
    if outputs == "logits":
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        module = create_model(ref, state=weights[0], weights_name=weights[1], **(pretrained or {}), **kwargs)
        return module, ref.create_name, struct, (0,)
    module = _features_module(ref, weights, out_indices, pretrained)
    strides = tuple(int(r) for r in module.feature_info.reduction())
    return module, ref.create_name, struct, strides


def _resolve_module(model: nn.Module, outputs: str) -> tuple[nn.Module, str, Structure | None, tuple[int, ...]]:
    """A module the caller built: its name from timm's pretrained_cfg, its strides from its feature_info."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture") or type(model).__name__
    struct = getattr(model, "structure", None)
    if not isinstance(struct, Structure):  # e.g. a features_only wrapper of a built-in MAE-DET
        struct = load_structure(name) if name in BUILTIN_NAMES else None
    info = getattr(model, "feature_info", None)
    strides: tuple[int, ...] = ()
    if outputs == "features" and info is not None and hasattr(info, "reduction"):
        strides = tuple(int(r) for r in info.reduction())
    return model, name, struct, strides


def _check_request(
    model: Any, structure: Any, checkpoint: Any, outputs: str, out_indices: Sequence[int] | None
) -> None:
    if outputs not in ("features", "logits"):
        raise ExportError(f"outputs must be 'features' or 'logits', not {outputs!r}.")
    if isinstance(model, ModelSource):
        if structure is not None or checkpoint is not None or out_indices is not None or model.outputs != outputs:
            raise ExportError("a resolved ModelSource is exported as it is: no structure, checkpoint or out_indices.")
        return
    if out_indices is not None and outputs == "logits":
        raise ExportError("out_indices only applies to feature outputs, not to logits.")
    if isinstance(model, nn.Module) and (structure is not None or checkpoint is not None):
        raise ExportError("structure and checkpoint apply to a model name; a module already has its weights.")
    if not isinstance(model, (str, nn.Module)):
        raise ExportError(f"model must be a timm model name or an nn.Module, not {type(model).__name__}.")


def resolve_model(
    model: str | nn.Module | ModelSource,
    *,
    structure: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    outputs: str = "features",
    out_indices: Sequence[int] | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> ModelSource:
    """The deploy-form module (eval, BN folded, tuple outputs) and its description.

    ``model`` is a model reference (``maedet_m``, ``maedet`` with ``structure``, ``resnet50.a1_in1k``,
    ``local-dir:FOLDER``, ``hf-hub:ORG/REPO``, or a converted folder's path, whose own weights load) or a module.
    ``checkpoint`` is a weights file or a converted folder; any weights load strictly (see :func:`create_model`).
    For features the default is C2..C5; ``out_indices`` picks others (timm's features_only indices). ``pretrained``
    loads the name's default pretrained weights through timm (``pretrained_cfg_overlay`` as timm takes it).
    """
    _check_request(model, structure, checkpoint, outputs, out_indices)
    weights = dict(pretrained=True, pretrained_cfg_overlay=pretrained_cfg_overlay) if pretrained else None
    if weights is not None and not isinstance(model, str):
        raise ExportError("pretrained weights apply to a model name; a module already has its weights.")
    if isinstance(model, ModelSource):  # already resolved (e.g. shared with the bench's PyTorch runs)
        return model
    if isinstance(model, str):
        module, name, struct, strides = _resolve_name(
            model, structure, checkpoint, outputs, out_indices, num_classes, weights
        )
    else:
        module, name, struct, strides = _resolve_module(model, outputs)
    return _deploy_source(module, name, struct, strides, outputs)


def _deploy_source(
    module: nn.Module, name: str, struct: Structure | None, strides: tuple[int, ...], outputs: str
) -> ModelSource:
    """Fold BN, freeze, wrap for tuple outputs, and describe the result (preprocessing from timm's pretrained_cfg)."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size", (3, 224, 224))
    deploy = fuse_bn(module).eval()
    for p in deploy.parameters():
        p.requires_grad_(False)
    if outputs == "logits":
        output_names: tuple[str, ...] = ("logits",)
        strides = (0,)
        size_multiple = 32
    else:
        output_names = _feature_names(strides) if strides else ()
        size_multiple = max([s for s in strides if s > 0], default=32)
    return ModelSource(
        module=TupleOutputs(deploy).eval(),
        model_name=name,
        output_names=output_names,
        strides=tuple(strides),
        structure=struct,
        mean=tuple(float(v) for v in cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        in_chans=int(input_size[0]),
        size_multiple=size_multiple,
        outputs=outputs,
    )


def validate_input_size(input_size: Sequence[int], size_multiple: int = 32) -> tuple[int, int]:
    """H and W from the network's largest stride (``size_multiple``: every level keeps at least one pixel) up to
    MAX_INPUT_SIDE; any size in between runs (odd sizes round up level by level, as a strided conv does)."""
    if len(input_size) != 2:
        raise ExportError(f"input size needs two numbers (H W), got {list(input_size)}.")
    h, w = (int(v) for v in input_size)
    if h < size_multiple or w < size_multiple:
        raise ExportError(
            f"input size {h}×{w} is too small: the network downsamples {size_multiple}×, so H and W must be at "
            f"least {size_multiple}."
        )
    if h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
        raise ExportError(f"input size {h}×{w} is too large: H and W must be at most {MAX_INPUT_SIDE}.")
    return h, w
