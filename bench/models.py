"""What gets measured: model specs (timm names, structure files, or whole detectors) and their cost.

A backbone is measured as a detection backbone: its C2..C5 feature maps (strides 4, 8, 16, 32), in deploy form
(eval mode, BN folded into the convs) — the same module the ONNX export writes. A detector (``maedet_m_gfl``,
``resnet50_gfl``, ...) is measured whole: backbone + FPN + GFocalV2 head giving the raw per-level outputs, and
with ``+nms`` (``maedet_m_gfl+nms``) also decoding and NMS: ``predict`` (torchvision NMS) in PyTorch, the
exported graph (ONNX ``NonMaxSuppression``) elsewhere. Cost figures are per image: params as trained (BN
counted, no classifier), and GMACs = conv + linear multiply-accumulates (the timm/fvcore convention; ResNet-50
@224 = 4.1 GMACs); a detector's GMACs cover backbone, FPN and head (NMS is not counted).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import maedet.zoo  # noqa: F401  (registers the maedet models with timm)
from maedet.export import ExportError, ModelSource, resolve_model
from maedet.export.model_reference import parse_model_reference, reference_structure
from maedet.export.model_source import create_model, detection_out_indices, is_maedet_name
from maedet.zoo import Structure, create_detector, gmacs, load_structure, param_count
from maedet.zoo.detector_folder import WEIGHTS_NAME, local_detector_folder
from maedet.zoo.detectors import DETECTORS, GENERIC_NAME, list_detectors

from .errors import BenchError

__all__ = [
    "DEFAULT_MODELS",
    "DETECTOR_MODELS",
    "DISPLAY_NAMES",
    "REFERENCE_MODELS",
    "ModelCost",
    "ModelSpec",
    "build_deploy_source",
    "display_name",
    "is_reference",
    "model_cost",
    "parse_model",
    "reference_label",
]

DEFAULT_MODELS = ("maedet_s", "maedet_m", "maedet_l", "resnet50", "resnet101")
NMS_SUFFIX = "+nms"
DETECTOR_MODELS = tuple(
    f"{name}_gfl{suffix}"
    for suffix in ("", NMS_SUFFIX)
    for name in ("maedet_s", "maedet_m", "maedet_l", "resnet50", "resnet101")
)
# Speedups are reported against these, measured in the same run on the same backend.
REFERENCE_MODELS = ("resnet50", "resnet101")
DISPLAY_NAMES = {
    "maedet_s": "MAE-DET-S",
    "maedet_m": "MAE-DET-M",
    "maedet_l": "MAE-DET-L",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "maedet_s_gfl": "MAE-DET-S GFL",
    "maedet_m_gfl": "MAE-DET-M GFL",
    "maedet_l_gfl": "MAE-DET-L GFL",
    "resnet50_gfl": "ResNet-50 GFL",
    "resnet101_gfl": "ResNet-101 GFL",
}
_STRUCTURE_SUFFIXES = (".json", ".txt")


@contextlib.contextmanager
def _as_bench_error() -> Iterator[None]:
    """The exporter's refusals (shared model rules) reach bench callers as the bench's error type."""
    try:
        yield
    except ExportError as exc:
        raise BenchError(str(exc)) from None


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure: a timm name, or model 'maedet' with a structure read from a file."""

    label: (
        str  # the row's name in tables and JSON ('maedet_s', 'resnet50', a structure file's stem, 'maedet_m_gfl+nms')
    )
    name: str  # the timm model name, or the detector name
    structure: Structure | None = None
    detector: bool = False  # a whole GFocalV2 detector (maedet.create_detector name)
    nms: bool = False  # a detector measured with decoding and NMS
    weights_sha256: str | None = None  # a trained detector folder's weights: a retrained folder is exported anew

    @property
    def is_maedet(self) -> bool:
        return is_maedet_name(self.name)

    @property
    def is_reference(self) -> bool:
        return is_reference(self.label)

    def cache_key(self) -> str:
        """Stable text that changes whenever the network changes (used to key exported files)."""
        body = self.name if self.structure is None else self.structure.to_json()
        body += self.weights_sha256 or ""
        safe_label = re.sub(r"[^\w.+-]", "_", self.label)  # 'local-dir:weights/x' names a file too
        return f"{safe_label}-{hashlib.sha1(body.encode()).hexdigest()[:10]}"


def display_name(label: str) -> str:
    base = label.removesuffix(NMS_SUFFIX)
    return DISPLAY_NAMES.get(base, base) + (" + NMS" if label.endswith(NMS_SUFFIX) else "")


def reference_label(label: str, reference: str) -> str:
    """The row that ``label`` is compared with for ``reference`` (resnet50/resnet101): the backbone itself for a
    backbone, the same-kind GFocalV2 detector (with or without NMS) for a detector."""
    if not label.removesuffix(NMS_SUFFIX).endswith("_gfl"):
        return reference
    return f"{reference}_gfl" + (NMS_SUFFIX if label.endswith(NMS_SUFFIX) else "")


def is_reference(label: str) -> bool:
    return any(label == reference_label(label, ref) for ref in REFERENCE_MODELS)


def parse_model(text: str) -> ModelSpec:
    """A structure file (JSON or authors' txt), a detector name, or any model reference the exporter takes
    ('resnet50', 'maedet_m', 'local-dir:FOLDER', 'hf-hub:ORG/REPO', a converted folder's path)."""
    text = text.strip()
    if not text:
        raise BenchError("an empty model name was given.")
    detector = text.removesuffix(NMS_SUFFIX)
    if detector in list_detectors() and detector != GENERIC_NAME:
        return ModelSpec(label=text, name=detector, detector=True, nms=text.endswith(NMS_SUFFIX))
    folder = local_detector_folder(detector)
    if folder is not None:  # a trained or converted detector: 'local-dir:FOLDER' or the path maedet-train prints
        return _folder_spec(folder, nms=text.endswith(NMS_SUFFIX))
    if text.endswith(NMS_SUFFIX):
        raise BenchError(f"{NMS_SUFFIX!r} applies to detectors ({', '.join(DETECTORS)}), not to {detector!r}.")
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
    with _as_bench_error():  # any reference timm takes, or a converted folder (the exporter's rules)
        ref = parse_model_reference(text)
        structure = reference_structure(ref)
    return ModelSpec(label=text, name=text, structure=structure)


def _folder_spec(folder: Path, nms: bool) -> ModelSpec:
    """A detector folder's row: named after the folder (after the run for maedet-train's ``RUN/detector``) with
    ``_gfl``, so it is compared with the ResNet detectors; keyed by its weights' digest."""
    stem = folder.resolve().name
    if stem == "detector":
        stem = folder.resolve().parent.name
    digest = hashlib.sha256()
    try:
        with (folder / WEIGHTS_NAME).open("rb") as weights:
            for chunk in iter(lambda: weights.read(2**20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise BenchError(f"cannot read the weights of the detector folder {str(folder)!r}: {exc.strerror}.") from None
    label = f"{stem}_gfl" + (NMS_SUFFIX if nms else "")
    return ModelSpec(label, f"local-dir:{folder}", detector=True, nms=nms, weights_sha256=digest.hexdigest())


@dataclass(frozen=True)
class ModelCost:
    params: int  # backbone parameters as trained (BN included, no classifier)
    gmacs: float  # conv + linear GMACs for one image at the measured input


def _meta_features_model(spec: ModelSpec) -> nn.Module:
    """The C2..C5 feature model on the meta device: shapes only, so counting costs no compute and no memory."""
    kwargs = {"structure": spec.structure} if spec.name == "maedet" else {}
    with torch.device("meta"), _as_bench_error():
        probe = create_model(spec.name, features_only=True, **kwargs)
        out_indices = detection_out_indices(probe, spec.label)
        if tuple(probe.feature_info.out_indices) == out_indices:
            return probe
        return create_model(spec.name, features_only=True, out_indices=out_indices, **kwargs)


def meta_detector(spec: ModelSpec) -> nn.Module:
    """A detector on the meta device: shapes only, for counting costs and memory."""
    with torch.device("meta"), warnings.catch_warnings():
        # a trained folder's weights land on meta tensors as no-ops (torch warns per tensor): shapes are enough
        warnings.simplefilter("ignore", UserWarning)
        return create_detector(spec.name, structure=spec.structure)  # a structure: a searched backbone's ('gfl')


def model_cost(spec: ModelSpec, height: int, width: int) -> ModelCost:
    """Params and GMACs per image of the C2..C5 backbone, or of the whole detector for a detector row.

    MAE-DET structures use the zoo's exact closed forms; any other model is counted by running its
    features model on meta tensors under torch's FlopCounterMode (which reports 2×MACs, hence the /2).
    """
    if spec.structure is not None and not spec.detector:
        return ModelCost(param_count(spec.structure), gmacs(spec.structure, height, width))
    if spec.detector:
        model: nn.Module = meta_detector(spec)
    else:
        model = _meta_features_model(spec)
    model.eval()  # as deployed: BatchNorm uses its running statistics, so a 1×1 map at a small input is fine
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return ModelCost(params, counter.get_total_flops() / 2 / 1e9)


def build_deploy_source(spec: ModelSpec) -> ModelSource:
    """What every backend runs for a backbone: the exporter's deploy form (eval, BN folded, C2..C5 tuple) with its
    names (a detector's comes from :func:`maedet.bench.detectors.detector_source`)."""
    with _as_bench_error():
        if spec.name == "maedet":
            return resolve_model("maedet", structure=spec.structure)
        return resolve_model(spec.name)
