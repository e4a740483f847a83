"""PyTorch → ONNX (fp32, fp16 or INT8 Q/DQ) with metadata, written atomically and checked in ONNX Runtime."""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from maedet.fileio import atomic_write_bytes

from .check import CheckReport, Tolerance, compare_outputs, onnx_session, run_onnx, run_torch, synthetic_images
from .errors import ExportError, MissingDependencyError
from .metadata import apply_metadata, build_metadata
from .model_source import ModelSource, resolve_model, validate_input_size

__all__ = ["PRECISIONS", "ExportResult", "export_onnx", "simplify_onnx", "torch_to_onnx"]

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "input"
# ONNX files above 2 GiB need external data; our backbones are far below (MAE-DET-L fp32 is ~175 MB).
_PROTOBUF_LIMIT = 2**31 - 1


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


def _example_input(source: ModelSource, batch: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(synthetic_images(batch, h, w, source.mean, source.std, seed=1234))


def _dry_run(source: ModelSource, example: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run PyTorch once at the export size, so size problems surface as one sentence, not an exporter trace."""
    try:
        with torch.no_grad():
            outs = source.module(example)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ExportError(
            f"model {source.model_name!r} cannot run at input size {tuple(example.shape[2:])}: {first}"
        ) from None
    return outs


def export_onnx(
    model: str | nn.Module | ModelSource,
    out: str | os.PathLike[str],
    *,
    structure: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    input_size: Sequence[int] = (640, 640),
    batch: int = 1,
    outputs: str = "features",
    out_indices: Sequence[int] | None = None,
    num_classes: int | None = None,
    dynamic: bool = False,
    opset: int = 18,
    precision: str = "fp32",
    io_half: bool = False,
    calib: str | os.PathLike[str] | None = None,
    calib_batches: int = 8,
    simplify: bool = False,
    check: bool = True,
    tolerance: Tolerance | None = None,
    per_channel: bool = True,
    int8_mode: str = "portable",
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a backbone to ONNX and, with ``check``, prove it matches PyTorch in ONNX Runtime CPU.

    ``model`` is a timm name or a module; see :func:`~maedet.export.model_source.resolve_model`. The file is
    written to a temporary name and renamed, so a failure never leaves a partial ``out``. A failed check does
    not raise: the report says so (``result.check.passed``) and the CLI exits non-zero.
    """
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if io_half and precision != "fp16":
        raise ExportError("half-precision inputs/outputs (io_half) need precision 'fp16'.")
    if not 7 <= opset <= 25:
        raise ExportError(f"opset {opset} is outside the range this exporter supports (7..25; 17 or newer advised).")
    if precision == "int8" and opset < 13:
        raise ExportError("INT8 Q/DQ with per-channel weights needs opset 13 or newer.")
    if int8_mode != "portable" and precision != "int8":
        raise ExportError("int8_mode applies to precision 'int8' only.")
    if calib_batches < 1:
        raise ExportError(f"calib_batches must be at least 1, got {calib_batches}.")
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist.")

    validate_input_size(input_size, batch)  # before building the model: bad sizes fail in milliseconds
    source = resolve_model(
        model,
        structure=structure,
        checkpoint=checkpoint,
        outputs=outputs,
        out_indices=out_indices,
        num_classes=num_classes,
    )
    h, w = validate_input_size(input_size, batch, source.size_multiple)
    example = _example_input(source, batch, h, w)
    torch_outs = _dry_run(source, example)
    output_names = list(source.output_names) or [f"out{i}" for i in range(len(torch_outs))]
    if len(output_names) != len(torch_outs):
        raise ExportError(f"the model returns {len(torch_outs)} outputs, but {len(output_names)} names were found.")
    strides = list(source.strides) if len(source.strides) == len(output_names) else [0] * len(output_names)
    spatial = all(o.dim() == 4 for o in torch_outs)

    say(f"exporting {source.model_name} ({outputs}: {', '.join(output_names)}) at {batch}×3×{h}×{w}")
    proto = torch_to_onnx(source.module, example, output_names, dynamic=dynamic, opset=opset, spatial_outputs=spatial)
    if simplify:
        say("simplifying with onnxslim")
        proto = simplify_onnx(proto)

    notes: list[str] = []
    if precision == "fp16":
        from .precision import to_fp16

        say("converting to fp16" + (" (fp16 inputs/outputs)" if io_half else " (fp32 inputs/outputs kept)"))
        proto = to_fp16(proto, keep_io_types=not io_half)
    elif precision == "int8":
        from .precision import calibration_batches, quantize_int8

        say("quantizing to INT8 (static, Q/DQ)")
        data, calib_note = calibration_batches(
            calib=calib, batches=calib_batches, batch=batch, input_size=(h, w), mean=source.mean, std=source.std
        )
        if calib is None:
            print(calib_note, file=sys.stderr)  # synthetic calibration: a warning the user must see
        else:
            say(calib_note)
        proto = quantize_int8(proto, data, per_channel=per_channel, mode=int8_mode)
        notes.append(calib_note)

    meta = build_metadata(
        model_name=source.model_name,
        structure_json=source.structure.to_dict() if source.structure is not None else None,
        outputs=outputs,
        output_names=tuple(output_names),
        output_strides=tuple(strides),
        input_name=INPUT_NAME,
        input_size=(source.in_chans, h, w),
        batch=batch,
        dynamic=dynamic,
        mean=source.mean,
        std=source.std,
        precision=precision,
        io_dtype="float16" if io_half else "float32",
        opset=opset,
    )
    if precision == "int8":
        meta["int8_mode"] = int8_mode
    apply_metadata(proto, meta)
    data = proto.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise ExportError("the model is larger than 2 GiB, which a single ONNX file cannot hold.")

    report = None
    if check:
        say("checking in ONNX Runtime (CPU) against PyTorch fp32")
        reference = {n: o.float().numpy() for n, o in zip(output_names, torch_outs, strict=True)}
        report = check_against_torch(
            data, source.module, example, output_names, precision, tolerance, reference=reference
        )
    atomic_write_bytes(out, data)
    return ExportResult(out, output_names, precision, meta, report, notes)


def check_against_torch(
    onnx_model: bytes | str | os.PathLike[str],
    module: nn.Module,
    images: torch.Tensor | np.ndarray,
    output_names: Sequence[str],
    precision: str,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
    reference: dict[str, np.ndarray] | None = None,
) -> CheckReport:
    """Run the ONNX model in ONNX Runtime CPU and compare with the PyTorch module on the same images.

    ``reference`` (PyTorch's outputs for ``images``, if already computed) saves running the module again.
    """
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.float32)
    try:
        session = onnx_session(onnx_model, threads=threads)
    except Exception as exc:  # ORT raises its own exception types for unsupported graphs
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX Runtime cannot load the exported {precision} model: {first}") from None
    ref = reference if reference is not None else run_torch(module, arr, output_names)
    got = run_onnx(session, arr)
    return compare_outputs(
        ref, got, precision, input_shape=arr.shape, providers=session.get_providers(), tolerance=tolerance
    )
