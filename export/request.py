"""One export request, and the one table that says which option applies to which kind of model.

Every way into the export (``maedet-export``, :func:`maedet.export.export_onnx`, the bench's cache) builds an
:class:`ExportRequest` and :func:`validate_request` judges it, here and nowhere else, before any model is built.
A new kind of model adds a column to :data:`APPLIES` (and a strategy, see :mod:`maedet.export.kinds`); an option
that does not apply to the model at hand is refused in one sentence instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ExportError
from .model_source import validate_input_size
from .validate import check_calibration, check_num_classes, check_opset

__all__ = ["APPLIES", "BACKBONE", "DETECTOR", "FLAGS", "KINDS", "PRECISIONS", "ExportRequest", "validate_request"]

PRECISIONS = ("fp32", "fp16", "int8")
BACKBONE = "backbone"
DETECTOR = "detector"
KINDS = (BACKBONE, DETECTOR)
_ALL = frozenset(KINDS)


@dataclass(frozen=True)
class ExportRequest:
    """Everything that shapes one export besides the model and the ONNX file's path (the CLI's flags, as Python)."""

    structure: Any = None  # a structure file or Structure: for 'maedet' (backbone) or 'gfl' (detector)
    checkpoint: str | os.PathLike[str] | None = None
    pretrained: bool = False  # the model's default pretrained weights, through timm (its cache or a download)
    pretrained_cfg_overlay: dict[str, Any] | None = None  # timm's, e.g. dict(file=PATH) for a local copy
    num_classes: int | None = None
    input_size: Sequence[int] | None = None  # default: the kind's (640×640 backbones, 800×1344 detectors)
    batch: int = 1
    dynamic: bool = False  # dynamic batch, height and width
    opset: int = 18
    precision: str = "fp32"  # fp32, fp16 or int8
    io_half: bool = False  # with fp16: fp16 inputs and outputs too
    calib: str | os.PathLike[str] | None = None  # with int8: a folder of calibration images
    calib_batches: int | None = None  # default: 128 images' worth from calib (all of a smaller folder), else 8
    calib_seed: int | None = None  # which images are sampled from calib (default 0)
    int8_mode: str = "portable"  # 'portable' (TensorRT and ONNX Runtime) or 'cpu' (ONNX Runtime on x86)
    per_channel: bool = True
    simplify: bool = False  # onnxslim
    check: bool = True  # compare with PyTorch in ONNX Runtime CPU
    tolerance: Any = None  # a check.Tolerance; default: TOLERANCES[precision]
    outputs: str = "features"  # 'features' (C2..C5 by default) or 'logits'
    out_indices: Sequence[int] | None = None
    nms: bool = True  # NMS in the graph (detections) or the raw per-level outputs
    embed_preprocess: bool = False  # uint8 RGB input, normalised in the graph
    postprocess_cfg: Any = None  # a PostprocessConfig; default: the detector's own
    openvino: str | os.PathLike[str] | None = None  # also write the OpenVINO IR (model.xml + model.bin) here
    # INT8 under an accuracy budget (export/int8_budget.py): the largest drop of the measure (AP points), the
    # measure (an AccuracyMeasure; the CLI makes COCO AP from --data/--images) and a cap on the float layers.
    max_ap_drop: float | None = None
    accuracy_measure: Any = None
    max_float_layers: int | None = None

    def model_request(self) -> dict[str, Any]:
        """The options that pick a backbone module (what :func:`resolve_model` takes besides the model)."""
        names = ("structure", "checkpoint", "outputs", "out_indices", "num_classes")
        request = {name: getattr(self, name) for name in names}
        if self.pretrained:  # only then, so callers that never ask for weights need no such parameter
            request.update(pretrained=True, pretrained_cfg_overlay=self.pretrained_cfg_overlay)
        return request

    def given(self) -> list[str]:
        """The options set away from their defaults."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]

    @classmethod
    def make(cls, base: ExportRequest | None, overrides: dict[str, Any]) -> ExportRequest:
        """``base`` (or the defaults) with keyword overrides; an unknown keyword is one sentence."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ExportError(f"the export has no option {', '.join(unknown)}.")
        return dataclasses.replace(base or cls(), **overrides)


# option → the kinds of model it applies to. Every field of ExportRequest has a row (a test holds that).
APPLIES: dict[str, frozenset[str]] = {
    "structure": _ALL,
    "checkpoint": _ALL,
    "pretrained": frozenset({BACKBONE}),
    "pretrained_cfg_overlay": frozenset({BACKBONE}),
    "num_classes": _ALL,
    "input_size": _ALL,
    "batch": _ALL,
    "dynamic": _ALL,
    "opset": _ALL,
    "precision": _ALL,
    "io_half": frozenset({BACKBONE}),
    "calib": _ALL,
    "calib_batches": _ALL,
    "calib_seed": _ALL,
    "int8_mode": _ALL,
    "per_channel": _ALL,
    "simplify": frozenset({BACKBONE}),
    "check": _ALL,
    "tolerance": _ALL,
    "outputs": frozenset({BACKBONE}),
    "out_indices": frozenset({BACKBONE}),
    "nms": frozenset({DETECTOR}),
    "embed_preprocess": frozenset({DETECTOR}),
    "postprocess_cfg": frozenset({DETECTOR}),
    "openvino": _ALL,
    "max_ap_drop": _ALL,
    "accuracy_measure": _ALL,
    "max_float_layers": _ALL,
}
# option → how the command line spells it, for the sentences (Python callers recognise their keyword in it).
FLAGS: dict[str, str] = {
    "outputs": "--logits",
    "nms": "--no-nms",
    "postprocess_cfg": "--score-thr/--iou-thr/--max-det/--nms-pre",
    "precision": "--half/--int8",
    "batch": "--batch-size",
    "accuracy_measure": "--data/--images",
}
_PRECISION_FLAGS = {"fp16": "--half", "int8": "--int8"}
# option → (the option it needs, the value that option must have).
NEEDS: dict[str, tuple[str, str]] = {
    "io_half": ("precision", "fp16"),
    "calib": ("precision", "int8"),
    "calib_batches": ("precision", "int8"),
    "calib_seed": ("precision", "int8"),
    "int8_mode": ("precision", "int8"),
    "max_ap_drop": ("precision", "int8"),
}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def _check_applies(request: ExportRequest, kind: str) -> None:
    wrong = [name for name in request.given() if kind not in APPLIES[name]]
    if wrong:
        where = sorted(APPLIES[wrong[0]])
        raise ExportError(
            f"{', '.join(flag(n) for n in wrong)} apply to {' and '.join(k + 's' for k in where)}, not to {kind}s."
        )
    missing = [n for n in request.given() if n in NEEDS and getattr(request, NEEDS[n][0]) != NEEDS[n][1]]
    if missing:
        precision = NEEDS[missing[0]][1]
        verb = "needs" if len(missing) == 1 else "need"
        raise ExportError(f"{', '.join(flag(n) for n in missing)} {verb} {_PRECISION_FLAGS[precision]} "
                          f"(precision {precision!r}).")  # fmt: skip


def validate_request(request: ExportRequest, kind: str, min_opset: int = 7) -> None:
    """Refuse, in one sentence and before any model is built, what cannot be exported for this kind of model."""
    if request.precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {request.precision!r}.")
    _check_applies(request, kind)
    check_opset(request.opset, min_opset)
    check_num_classes(request.num_classes)
    if request.precision == "int8" and request.opset < 13:
        raise ExportError("INT8 Q/DQ with per-channel weights needs opset 13 or newer.")
    if request.batch < 1:
        raise ExportError(f"batch must be at least 1, got {request.batch} ({flag('batch')}).")
    if request.calib_batches is not None and request.calib_batches < 1:
        raise ExportError(f"--calib-batches must be at least 1, got {request.calib_batches}.")
    if request.pretrained and request.checkpoint is not None:
        raise ExportError("give either a checkpoint or pretrained weights, not both.")
    if request.pretrained_cfg_overlay is not None and not request.pretrained:
        raise ExportError("pretrained_cfg_overlay applies with pretrained=True.")
    if request.openvino is not None:
        from .openvino import check_ir_folder, require_openvino

        require_openvino()
        check_ir_folder(request.openvino)
    if request.input_size is not None:
        validate_input_size(request.input_size)  # the stride is known only later; bad sizes still fail at once
    if request.precision == "int8":
        check_calibration(request.calib, request.calib_batches, request.batch)
        if request.calib is not None:
            from .precision import calibration_files

            calibration_files(request.calib, request.batch)  # a missing or empty folder fails now, not later
    _check_budget(request)


def _check_budget(request: ExportRequest) -> None:
    """--max-ap-drop, its measure and --max-float-layers come together, each a sensible value."""
    drop, measure, cap = request.max_ap_drop, request.accuracy_measure, request.max_float_layers
    if drop is None:
        given = [n for n in ("accuracy_measure", "max_float_layers") if getattr(request, n) is not None]
        if given:
            raise ExportError(f"{', '.join(flag(n) for n in given)} go with --max-ap-drop P (INT8 under a budget).")
        return
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop <= 100:
        raise ExportError(f"--max-ap-drop must be a number of AP points from 0 to 100, not {drop!r}.")
    if measure is None:
        raise ExportError("--max-ap-drop needs --data FILE and --images DIR: the AP is measured on them.")
    if not callable(measure) or not isinstance(getattr(measure, "name", None), str):
        raise ExportError("accuracy_measure must be callable (an ONNX file's path → score) and have a name.")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        raise ExportError(f"--max-float-layers must be a whole number of at least 0, not {cap!r}.")
