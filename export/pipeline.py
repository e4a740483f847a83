"""The one export pipeline: model → ONNX (fp32, fp16 or INT8 Q/DQ) with metadata, checked, written atomically.

Every kind of model (backbone, detector; see :mod:`maedet.export.kinds`) goes through the same steps: validate the
request (:func:`~maedet.export.request.validate_request`), prepare the module, trace it, lower its precision, join
the kind's post-processing graph, write the metadata, check the file against PyTorch and write it. A step exists
once, so what one kind gains (a seeded calibration, the weights' identity, an opset rule) every kind has.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from maedet.fileio import atomic_write_bytes, check_output_path

from .backbone import BackboneKind
from .detector import DetectorKind, is_detector
from .errors import ExportError
from .kinds import ModelKind, Prepared
from .metadata import apply_metadata, build_metadata, file_sha256, weights_identity
from .onnx_export import INPUT_NAME, PROTOBUF_LIMIT, join_graphs, simplify_onnx, torch_to_onnx
from .openvino import convert_to_ir, write_ir
from .request import DETECTOR, ExportRequest, validate_request

__all__ = ["ExportResult", "export_detector_onnx", "export_onnx", "kind_of"]

logger = logging.getLogger(__name__)


def kind_of(model: Any) -> ModelKind:
    """The strategy for ``model``: a detector name, folder or module, else a backbone (a new kind goes here)."""
    return DetectorKind() if is_detector(model) else BackboneKind()


@dataclass
class ExportResult:
    """What an export wrote: the file, its outputs, its metadata, the parity check (None if skipped), notes."""

    path: Path
    output_names: list[str]
    precision: str
    metadata: dict[str, Any]
    check: Any = None  # a CheckReport (backbones) or DetectorCheck (detectors): both have passed and to_dict()
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. synthetic calibration)
    openvino: Path | None = None  # the IR's model.xml, when asked for (ExportRequest.openvino)
    openvino_check: Any = None  # the IR's parity check in OpenVINO (None if skipped)


@dataclass
class _Lowered:
    """The network at the requested precision, the notes for the user and, for INT8, the calibration source."""

    proto: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    calibration: str | None = None  # 'synthetic' or 'N images from DIR, seed S'
    budget: Any = None  # with max_ap_drop: the int8_budget.BudgetResult (float layers, scores, latencies)


def _graph(prepared: Prepared, request: ExportRequest) -> onnx.ModelProto:
    """The fp32 ONNX graph of the prepared network (simplified with onnxslim when asked)."""
    batch, _, h, w = prepared.example.shape
    logger.info("exporting %s (%s) at %d×3×%d×%d", prepared.name, ", ".join(prepared.output_names), batch, h, w)
    proto = torch_to_onnx(
        prepared.module,
        prepared.example,
        prepared.output_names,
        dynamic=request.dynamic,
        opset=request.opset,
        spatial_outputs=prepared.spatial_outputs,
        axes=prepared.axes,
    )
    if request.simplify:
        logger.info("simplifying with onnxslim")
        proto = simplify_onnx(proto)
    return proto


def _lower(
    proto: onnx.ModelProto, prepared: Prepared, request: ExportRequest, kind: ModelKind, assemble: Any = None
) -> _Lowered:
    """fp16 conversion or INT8 quantization of the fp32 network."""
    if request.precision == "fp16":
        from .precision import to_fp16

        logger.info("converting to fp16 (%s inputs/outputs)", "fp16" if request.io_half else "fp32")
        return _Lowered(to_fp16(proto, keep_io_types=not request.io_half))
    if request.precision != "int8":
        return _Lowered(proto)
    from .precision import calibration_batches, quantize_int8

    logger.info("quantizing to INT8 (static, Q/DQ)")
    seed = request.calib_seed or 0
    data, note = calibration_batches(
        calib=request.calib,
        batches=request.calib_batches,
        batch=request.batch,
        input_size=prepared.input_hw,
        mean=prepared.mean,
        std=prepared.std,
        seed=seed,
    )
    images = len(data) * request.batch
    calibration = "synthetic" if request.calib is None else f"{images} images from {request.calib}, seed {seed}"
    batches = [kind.to_input(prepared, batch) for batch in data]
    if request.max_ap_drop is not None:
        return _budgeted(proto, batches, request, assemble, _Lowered(proto, [note], calibration))
    quantized = quantize_int8(proto, batches, per_channel=request.per_channel, mode=request.int8_mode)
    return _Lowered(quantized, [note], calibration)


def _budgeted(
    proto: onnx.ModelProto, batches: Any, request: ExportRequest, assemble: Any, lowered: _Lowered
) -> _Lowered:
    """INT8 with the fewest float layers within --max-ap-drop (export/int8_budget.py); ``assemble`` makes the
    whole file (post-processing, metadata) the accuracy measure reads."""
    from .int8_budget import budgeted_int8

    budget = budgeted_int8(
        proto, batches, measure=request.accuracy_measure, max_drop=request.max_ap_drop, assemble=assemble,
        mode=request.int8_mode, per_channel=request.per_channel, max_float_layers=request.max_float_layers,
    )  # fmt: skip
    lowered.proto, lowered.budget = budget.network, budget
    return lowered


def _weights(model: Any, request: ExportRequest, prepared: Prepared, kind: ModelKind) -> tuple[str, str | None]:
    """What the file computes with, for its metadata: (``weights``, ``weights_sha256`` or None)."""
    tag = kind.weights_tag(prepared, request)
    if tag is not None:
        file = (request.pretrained_cfg_overlay or {}).get("file")
        return tag, file_sha256(file) if file and Path(file).is_file() else None
    return weights_identity(model, request.checkpoint)


def _metadata(
    prepared: Prepared, request: ExportRequest, kind: ModelKind, weights: tuple[str, str | None], lowered: _Lowered
) -> dict[str, Any]:
    """The keys every file carries, then the kind's own."""
    extras = kind.metadata(prepared, request)
    if request.precision == "int8":
        extras.update(int8_mode=request.int8_mode, int8_calibration=lowered.calibration)
    if lowered.budget is not None:
        extras.update(lowered.budget.metadata())
    return build_metadata(
        model_name=prepared.name,
        output_names=kind.outputs(prepared, request),
        input_name=INPUT_NAME,
        input_size=(3, *prepared.input_hw),
        batch=request.batch,
        dynamic=request.dynamic,
        mean=prepared.mean,
        std=prepared.std,
        precision=request.precision,
        io_dtype="float16" if request.io_half else "float32",
        opset=request.opset,
        weights=weights,
        extras=extras,
    )


def _prepare(model: Any, request: ExportRequest, kind: ModelKind) -> tuple[Prepared, tuple[str, str | None]]:
    """The module at the export size, and its weights' identity (a warning when they are random)."""
    kind.check_model(model, request)
    prepared = kind.prepare(model, request, tuple(request.input_size or kind.default_size))
    weights = _weights(model, request, prepared, kind)
    if weights[0] == "random":
        logger.warning(
            "no weights given: exporting %s with RANDOM weights (fine for timing, meaningless outputs); add "
            "--checkpoint FILE (or --pretrained for a timm backbone).",
            prepared.name,
        )
    return prepared, weights


def _assembled(
    network: onnx.ModelProto, post: onnx.ModelProto | None, outputs: list[str], meta: dict[str, Any]
) -> onnx.ModelProto:
    """The network joined with the kind's post-processing graph (if any), carrying ``meta``."""
    proto = network if post is None else join_graphs(network, post, outputs)
    apply_metadata(proto, meta)
    return proto


def export_onnx(
    model: Any, out: str | os.PathLike[str], options: ExportRequest | None = None, **kwargs: Any
) -> ExportResult:
    """Export a backbone or a detector to ONNX and, with ``check``, prove it matches PyTorch in ONNX Runtime CPU.

    ``model`` is a timm name or module (see :func:`~maedet.export.model_source.resolve_model`), or a detector
    name, folder or module. Options come as an :class:`ExportRequest` or as its fields by keyword
    (``export_onnx("maedet_m", "m.onnx", precision="fp16")``); keywords given with ``options`` replace those fields.
    The file is written to a temporary name and renamed, so a failure never leaves a partial ``out``. A failed check
    does not raise: the report says so (``result.check.passed``) and the CLI exits non-zero.
    """
    request = ExportRequest.make(options, kwargs)
    kind = kind_of(model)
    validate_request(request, kind.name, kind.min_opset)
    out = check_output_path(out, "ONNX file")
    prepared, weights = _prepare(model, request, kind)
    post = kind.post_graph(prepared, request)
    draft = _metadata(prepared, request, kind, weights, _Lowered(onnx.ModelProto()))

    def assemble(network: onnx.ModelProto) -> bytes:  # a candidate file, as the budgeted INT8 search measures it
        return _assembled(network, post, kind.outputs(prepared, request), draft).SerializeToString()

    lowered = _lower(_graph(prepared, request), prepared, request, kind, assemble)
    network = lowered.proto
    if post is not None:
        logger.info("joining the post-processing graph (kept fp32)")
    meta = _metadata(prepared, request, kind, weights, lowered)
    proto = _assembled(network, post, kind.outputs(prepared, request), meta)
    data = proto.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise ExportError("the model is larger than 2 GiB, which a single ONNX file cannot hold.")
    network_data = data if post is None else network.SerializeToString()
    report = None
    if request.check:
        logger.info("checking in ONNX Runtime (CPU) against PyTorch")
        report = kind.check(prepared, request, data, network_data)
    ir = _openvino(prepared, request, kind, data, network_data) if request.openvino is not None else None
    atomic_write_bytes(out, data)
    result = ExportResult(out, [o.name for o in proto.graph.output], request.precision, meta, report, lowered.notes)
    if ir is not None:
        result.openvino_check = ir[1]
        result.openvino = write_ir(ir[0], request.openvino, meta)
    return result


def _openvino(
    prepared: Prepared, request: ExportRequest, kind: ModelKind, data: bytes, network_data: bytes
) -> tuple[Any, Any]:
    """The file converted to an OpenVINO model (before anything is written, so a node OpenVINO cannot convert
    leaves no file) and, with ``check``, its parity check against PyTorch in OpenVINO."""
    logger.info("converting to OpenVINO IR")
    model = convert_to_ir(data)
    if not request.check:
        return model, None
    logger.info("checking in OpenVINO (CPU) against PyTorch")
    return model, kind.check(prepared, request, data, network_data, runtime="openvino")


def export_detector_onnx(model: Any, out: str | os.PathLike[str], **kwargs: Any) -> ExportResult:
    """:func:`export_onnx` for a detector name, folder or module (a backbone is refused in one sentence)."""
    kind = kind_of(model)
    if kind.name != DETECTOR:
        raise ExportError(f"{model!r} is not a detector; export it with export_onnx.")
    return export_onnx(model, out, **kwargs)
