"""What gets measured: model specs (timm names or structure files) and their cost at the benchmark input.

Every model is measured as a detection backbone: its C2..C5 feature maps (strides 4, 8, 16, 32), in deploy form
(eval mode, BN folded into the convs) — the same module the ONNX export writes. Cost figures are per image:
params of the backbone as trained (BN counted, no classifier), and GMACs = conv + linear multiply-accumulates
(the timm/fvcore convention; ResNet-50 @224 = 4.1 GMACs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import maedet  # noqa: F401  (registers the maedet models with timm)
from maedet.zoo import Structure, gmacs, load_structure, param_count

if TYPE_CHECKING:
    from maedet.export import ModelSource

from .errors import BenchError

__all__ = [
    "DEFAULT_MODELS",
    "DISPLAY_NAMES",
    "REFERENCE_MODELS",
    "ModelCost",
    "ModelSpec",
    "build_deploy_source",
    "detection_out_indices",
    "display_name",
    "model_cost",
    "parse_model",
]

DEFAULT_MODELS = ("maedet_s", "maedet_m", "maedet_l", "resnet50", "resnet101")
# Speedups are reported against these, measured in the same run on the same backend.
REFERENCE_MODELS = ("resnet50", "resnet101")
DISPLAY_NAMES = {
    "maedet_s": "MAE-DET-S",
    "maedet_m": "MAE-DET-M",
    "maedet_l": "MAE-DET-L",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
}
DETECTION_STRIDES = (4, 8, 16, 32)
_STRUCTURE_SUFFIXES = (".json", ".txt")


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure: a timm name, or model 'maedet' with a structure read from a file."""

    label: str  # the row's name in tables and JSON ('maedet_s', 'resnet50', or a structure file's stem)
    name: str  # the timm model name
    structure: Structure | None = None

    @property
    def is_maedet(self) -> bool:
        return self.name == "maedet" or self.name.startswith("maedet_")

    @property
    def is_reference(self) -> bool:
        return self.label in REFERENCE_MODELS

    def cache_key(self) -> str:
        """Stable text that changes whenever the network changes (used to key exported files)."""
        body = self.name if self.structure is None else self.structure.to_json()
        return f"{self.label}-{hashlib.sha1(body.encode()).hexdigest()[:10]}"


def display_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label)


def parse_model(text: str) -> ModelSpec:
    """A timm model name ('resnet50', 'maedet_m', 'convnext_tiny') or a structure file (JSON or authors' txt)."""
    text = text.strip()
    if not text:
        raise BenchError("an empty model name was given.")
    path = Path(text)
    if path.suffix.lower() in _STRUCTURE_SUFFIXES or path.is_file():
        if not path.is_file():
            raise BenchError(f"structure file {text!r} does not exist.")
        try:
            structure = load_structure(path)
        except (ValueError, OSError) as exc:
            raise BenchError(f"cannot read structure file {text!r}: {exc}") from None
        return ModelSpec(label=path.stem, name="maedet", structure=structure)
    if text == "maedet":
        raise BenchError("model 'maedet' needs a structure: pass the structure file's path instead.")
    if not timm.is_model(text):
        raise BenchError(f"unknown model {text!r}: not a maedet model, a timm model nor a structure file.")
    structure = load_structure(text) if text.startswith("maedet_") else None
    return ModelSpec(label=text, name=text, structure=structure)


def _create(spec: ModelSpec, **kwargs) -> nn.Module:
    if spec.structure is not None and spec.name == "maedet":
        kwargs["structure"] = spec.structure
    try:
        return timm.create_model(spec.name, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"cannot build model {spec.label!r} as a feature extractor: {first}") from None


def detection_out_indices(feature_module: nn.Module, label: str) -> tuple[int, ...]:
    """timm out_indices of the last feature map at each of strides 4, 8, 16, 32 (C2..C5)."""
    reductions = list(feature_module.feature_info.reduction())
    indices = list(feature_module.feature_info.out_indices)
    picked = []
    for stride in DETECTION_STRIDES:
        hits = [i for i, r in zip(indices, reductions, strict=True) if r == stride]
        if not hits:
            raise BenchError(
                f"model {label!r} has no feature map at stride {stride} (it has strides {reductions}), so it "
                "cannot serve as a C2..C5 detection backbone."
            )
        picked.append(hits[-1])
    return tuple(picked)


@dataclass(frozen=True)
class ModelCost:
    params: int  # backbone parameters as trained (BN included, no classifier)
    gmacs: float  # conv + linear GMACs for one image at the measured input


def _meta_features_model(spec: ModelSpec) -> nn.Module:
    """The C2..C5 feature model on the meta device: shapes only, so counting costs no compute and no memory."""
    with torch.device("meta"):
        probe = _create(spec, features_only=True)
        out_indices = detection_out_indices(probe, spec.label)
        if tuple(probe.feature_info.out_indices) == out_indices:
            return probe
        return _create(spec, features_only=True, out_indices=out_indices)


def model_cost(spec: ModelSpec, height: int, width: int) -> ModelCost:
    """Params and GMACs per image of the C2..C5 backbone.

    MAE-DET structures use the zoo's exact closed forms; any other model is counted by running its
    features model on meta tensors under torch's FlopCounterMode (which reports 2×MACs, hence the /2).
    """
    if spec.structure is not None:
        return ModelCost(param_count(spec.structure), gmacs(spec.structure, height, width))
    model = _meta_features_model(spec)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return ModelCost(params, counter.get_total_flops() / 2 / 1e9)


def build_deploy_source(spec: ModelSpec) -> ModelSource:
    """What every backend runs: the exporter's deploy form (eval, BN folded, C2..C5 tuple) with its names."""
    from maedet.export import ExportError, resolve_model

    try:
        if spec.name == "maedet":
            return resolve_model("maedet", structure=spec.structure)
        return resolve_model(spec.name)
    except ExportError as exc:
        raise BenchError(str(exc)) from None
