"""PyTorch → ONNX (fp32, fp16 or INT8 Q/DQ) with metadata, written atomically and checked in ONNX Runtime."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn

from maedet.fileio import atomic_write_bytes, check_output_path

from .check import CheckReport, Tolerance, check_against_torch, synthetic_images
from .errors import ExportError, MissingDependencyError, first_line
from .metadata import apply_metadata, build_metadata, file_sha256, weights_identity
from .model_source import ModelSource, resolve_model, validate_input_size
from .validate import (
    check_activation_memory,
    check_calibration,
    check_num_classes,
    check_opset,
    check_out_indices,
)

__all__ = ["INPUT_NAME", "PRECISIONS", "ExportOptions", "ExportResult", "export_onnx", "simplify_onnx", "torch_to_onnx"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "input"
# ONNX files above 2 GiB need external data; our backbones are far below (MAE-DET-L fp32 is ~175 MB).
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class ExportOptions:
    """Everything that shapes one export besides the model and the output path (the CLI's flags, as Python)."""

    structure: Any = None  # a structure file or Structure, for model 'maedet'
    checkpoint: str | os.PathLike[str] | None = None
    pretrained: bool = False  # the model's default pretrained weights, through timm (its cache or a download)
    pretrained_cfg_overlay: dict[str, Any] | None = None  # timm's, e.g. dict(file=PATH) for a local copy
    input_size: Sequence[int] = (640, 640)
    batch: int = 1
    outputs: str = "features"  # 'features' (C2..C5 by default) or 'logits'
    out_indices: Sequence[int] | None = None
    num_classes: int | None = None
    dynamic: bool = False  # dynamic batch, height and width
    opset: int = 18
    precision: str = "fp32"  # fp32, fp16 or int8
    io_half: bool = False  # with fp16: fp16 inputs and outputs too
    calib: str | os.PathLike[str] | None = None  # with int8: a folder of calibration images
    calib_batches: int | None = None  # default: 128 images' worth from calib (all of a smaller folder), else 8
    calib_seed: int = 0  # which images are sampled from calib
    simplify: bool = False  # onnxslim
    check: bool = True  # compare with PyTorch in ONNX Runtime CPU
    tolerance: Tolerance | None = None  # default: TOLERANCES[precision]
    per_channel: bool = True
    int8_mode: str = "portable"  # 'portable' (TensorRT and ONNX Runtime) or 'cpu' (ONNX Runtime on x86)

    def model_request(self) -> dict[str, Any]:
        """The options that pick the module (what :func:`resolve_model` takes besides the model)."""
        names = ("structure", "checkpoint", "outputs", "out_indices", "num_classes")
        request = {name: getattr(self, name) for name in names}
        if self.pretrained:  # only then, so callers that never ask for weights need no such parameter
            request.update(pretrained=True, pretrained_cfg_overlay=self.pretrained_cfg_overlay)
        return request

    def validate(self) -> None:
        """Refuse impossible combinations in one sentence, before any model is built."""
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        if self.io_half and self.precision != "fp16":
            raise ExportError("half-precision inputs/outputs (io_half) need precision 'fp16'.")
        check_opset(self.opset)
        check_num_classes(self.num_classes)
        if self.precision == "int8" and self.opset < 13:
            raise ExportError("INT8 Q/DQ with per-channel weights needs opset 13 or newer.")
        if self.int8_mode != "portable" and self.precision != "int8":
            raise ExportError("int8_mode applies to precision 'int8' only.")
        if self.calib_batches is not None and self.calib_batches < 1:
            raise ExportError(f"calib_batches must be at least 1, got {self.calib_batches}.")
        check_calibration(self.calib if self.precision == "int8" else None, self.calib_batches, self.batch)
        if self.batch < 1:
            raise ExportError(f"batch must be at least 1, got {self.batch}.")
        if self.pretrained and self.checkpoint is not None:
            raise ExportError("give either a checkpoint or pretrained weights, not both.")
        if self.pretrained_cfg_overlay is not None and not self.pretrained:
            raise ExportError("pretrained_cfg_overlay applies with pretrained=True.")
        validate_input_size(self.input_size)  # the stride is known only later; bad sizes still fail in milliseconds
        if self.precision == "int8" and self.calib is not None:
            from .precision import calibration_files

            calibration_files(self.calib, self.batch)  # a missing or empty folder fails now, not after the export


@dataclass
class ExportResult:
    """What export_onnx produced: the file, its outputs, its metadata and the parity check (None if skipped)."""

    path: Path
    output_names: list[str]
    precision: str
    metadata: dict[str, Any]
    check: CheckReport | None = None
    warnings: list[str] = field(default_factory=list)


def torch_to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    output_names: Sequence[str],
    *,
    dynamic: bool,
    opset: int,
    spatial_outputs: bool = True,
) -> onnx.ModelProto:
    """Trace ``module`` to an in-memory ONNX model (TorchScript exporter: needs no onnxscript)."""
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        for name in output_names:
            dynamic_axes[name] = (
                {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} if spatial_outputs else {0: "batch"}
            )
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return _inline_identity_initializers(onnx.load_from_string(buffer.getvalue()))


def _inline_identity_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo the exporter's sharing of equal weights through Identity nodes (e.g. zero biases after BN folding).

    Quantizers and TensorRT expect every conv's weight and bias to be an initializer of its own.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unused = [t for t in graph.initializer if t.name not in used]
        for t in unused:
            graph.initializer.remove(t)
    return model


def simplify_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and graph cleanup with onnxslim (optional extra ``maedet[simplify]``)."""
    try:
        import onnxslim
    except ImportError:
        raise MissingDependencyError(
            "--simplify needs onnxslim, which is not installed: pip install 'maedet[simplify]'."
        ) from None
    slimmed = onnxslim.slim(model)
    if slimmed is None:
        raise ExportError("onnxslim could not simplify this model.")
    return slimmed


@dataclass
class _Traced:
    """The resolved model at the export size: its example input, PyTorch's outputs and their names."""

    source: ModelSource
    example: torch.Tensor
    torch_outputs: tuple[torch.Tensor, ...]
    output_names: list[str]
    height: int
    width: int

    @property
    def strides(self) -> list[int]:
        strides = list(self.source.strides)
        return strides if len(strides) == len(self.output_names) else [0] * len(self.output_names)


def _trace_inputs(model: str | nn.Module | ModelSource, opts: ExportOptions) -> _Traced:
    """Resolve the model and run PyTorch once at the export size, so size problems surface as one sentence."""
    check_out_indices(model, opts.structure, opts.out_indices)
    source = resolve_model(model, **opts.model_request())
    h, w = validate_input_size(opts.input_size, source.size_multiple)
    check_activation_memory(source.module, (opts.batch, source.in_chans, h, w), f"exporting at {opts.batch}×{h}×{w}")
    example = torch.from_numpy(synthetic_images(opts.batch, h, w, source.mean, source.std, seed=1234))
    try:
        with torch.no_grad():
            outs = source.module(example)
    except RuntimeError as exc:  # PyTorch's shape errors: the network cannot run at this size
        raise ExportError(
            f"model {source.model_name!r} cannot run at input size {(h, w)}: {first_line(exc, 200)}"
        ) from None
    names = list(source.output_names) or [f"out{i}" for i in range(len(outs))]
    if len(names) != len(outs):
        raise ExportError(f"the model returns {len(outs)} outputs, but {len(names)} names were found.")
    return _Traced(source, example, tuple(outs), names, h, w)


@dataclass
class _Lowered:
    """The graph at the requested precision, the notes for the user and, for INT8, the calibration source."""

    proto: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    calibration: str | None = None  # 'synthetic' or 'N images from DIR, seed S'


def _lower_precision(proto: onnx.ModelProto, traced: _Traced, opts: ExportOptions) -> _Lowered:
    """fp16 conversion or INT8 quantization of the fp32 graph."""
    if opts.precision == "fp16":
        from .precision import to_fp16

        logger.info("converting to fp16 (%s inputs/outputs)", "fp16" if opts.io_half else "fp32")
        return _Lowered(to_fp16(proto, keep_io_types=not opts.io_half))
    if opts.precision == "int8":
        from .precision import calibration_batches, quantize_int8

        logger.info("quantizing to INT8 (static, Q/DQ)")
        source = traced.source
        data, calib_note = calibration_batches(
            calib=opts.calib,
            batches=opts.calib_batches,
            batch=opts.batch,
            input_size=(traced.height, traced.width),
            mean=source.mean,
            std=source.std,
            seed=opts.calib_seed,
        )
        images = len(data) * opts.batch
        calibration = (
            "synthetic" if opts.calib is None else f"{images} images from {opts.calib}, seed {opts.calib_seed}"
        )
        quantized = quantize_int8(proto, data, per_channel=opts.per_channel, mode=opts.int8_mode)
        return _Lowered(quantized, [calib_note], calibration)
    return _Lowered(proto)


def _weights(model: str | nn.Module | ModelSource, source: ModelSource, opts: ExportOptions) -> tuple[str, str | None]:
    """What the file computes with, for its metadata: (``weights``, ``weights_sha256`` or None)."""
    if opts.pretrained and opts.checkpoint is None:
        cfg = getattr(getattr(source.module, "inner", None), "pretrained_cfg", None) or {}
        tag = ".".join(p for p in (cfg.get("architecture") or source.model_name, cfg.get("tag")) if p)
        file = (opts.pretrained_cfg_overlay or {}).get("file")
        return tag, file_sha256(file) if file and Path(file).is_file() else None
    return weights_identity(model, opts.checkpoint)


def _metadata(traced: _Traced, opts: ExportOptions, weights: tuple[str, str | None]) -> dict[str, Any]:
    source = traced.source
    meta = build_metadata(
        model_name=source.model_name,
        structure_json=source.structure.to_dict() if source.structure is not None else None,
        outputs=opts.outputs,
        output_names=tuple(traced.output_names),
        output_strides=tuple(traced.strides),
        input_name=INPUT_NAME,
        input_size=(source.in_chans, traced.height, traced.width),
        batch=opts.batch,
        dynamic=opts.dynamic,
        mean=source.mean,
        std=source.std,
        precision=opts.precision,
        io_dtype="float16" if opts.io_half else "float32",
        opset=opts.opset,
        weights=weights[0],
        weights_sha256=weights[1],
    )
    if opts.precision == "int8":
        meta["int8_mode"] = opts.int8_mode
    return meta


def _options(options: ExportOptions | None, overrides: dict[str, Any]) -> ExportOptions:
    try:
        opts = dataclasses.replace(options or ExportOptions(), **overrides)
    except TypeError:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ExportOptions)})
        raise ExportError(f"export_onnx has no option {', '.join(unknown)}.") from None
    opts.validate()
    return opts


def _graph(traced: _Traced, opts: ExportOptions) -> onnx.ModelProto:
    """The fp32 ONNX graph of the traced module (simplified with onnxslim when asked)."""
    logger.info(
        "exporting %s (%s: %s) at %d×3×%d×%d",
        traced.source.model_name,
        opts.outputs,
        ", ".join(traced.output_names),
        opts.batch,
        traced.height,
        traced.width,
    )
    proto = torch_to_onnx(
        traced.source.module,
        traced.example,
        traced.output_names,
        dynamic=opts.dynamic,
        opset=opts.opset,
        spatial_outputs=all(o.dim() == 4 for o in traced.torch_outputs),
    )
    if opts.simplify:
        logger.info("simplifying with onnxslim")
        proto = simplify_onnx(proto)
    return proto


def _check(data: bytes, traced: _Traced, opts: ExportOptions) -> CheckReport:
    logger.info("checking in ONNX Runtime (CPU) against PyTorch fp32")
    reference = {n: o.float().numpy() for n, o in zip(traced.output_names, traced.torch_outputs, strict=True)}
    return check_against_torch(
        data,
        traced.source.module,
        traced.example,
        traced.output_names,
        opts.precision,
        opts.tolerance,
        reference=reference,
    )


def export_onnx(
    model: str | nn.Module | ModelSource,
    out: str | os.PathLike[str],
    options: ExportOptions | None = None,
    **kwargs: Any,
) -> ExportResult:
    """Export a backbone to ONNX and, with ``check``, prove it matches PyTorch in ONNX Runtime CPU.

    ``model`` is a timm name or a module; see :func:`~maedet.export.model_source.resolve_model`. Options come as
    an :class:`ExportOptions` or as its fields by keyword (``export_onnx("maedet_m", "m.onnx", precision="fp16")``);
    keywords given with ``options`` replace those fields. The file is written to a temporary name and renamed, so a
    failure never leaves a partial ``out``. A failed check does not raise: the report says so
    (``result.check.passed``) and the CLI exits non-zero.
    """
    opts = _options(options, kwargs)
    out = check_output_path(out, "ONNX file")
    traced = _trace_inputs(model, opts)
    weights = _weights(model, traced.source, opts)
    if weights[0] == "random":
        logger.warning(
            "no weights given: exporting %s with RANDOM weights (fine for timing, meaningless outputs); add "
            "--pretrained or --checkpoint FILE (pretrained=True or checkpoint= in Python).",
            traced.source.model_name,
        )
    lowered = _lower_precision(_graph(traced, opts), traced, opts)
    proto, notes = lowered.proto, lowered.notes
    meta = _metadata(traced, opts, weights)
    if lowered.calibration is not None:
        meta["int8_calibration"] = lowered.calibration
    apply_metadata(proto, meta)
    data = proto.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise ExportError("the model is larger than 2 GiB, which a single ONNX file cannot hold.")
    report = _check(data, traced, opts) if opts.check else None
    atomic_write_bytes(out, data)
    return ExportResult(out, traced.output_names, opts.precision, meta, report, notes)
