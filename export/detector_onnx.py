"""GFocalV2 detector → one ONNX file: network + decoding + NMS, or (``nms=False``) the raw per-level outputs.

The network and the postprocess are traced separately and joined with ``onnx.compose``, so fp16 and INT8 lower
the network only while box decoding, NMS and top-k stay fp32 (``NonMaxSuppression`` takes float32 only). The
input is the normalised, padded NCHW float batch the PyTorch model takes (``embed_preprocess``: uint8 pixels,
normalised inside the graph); the whole input counts as the image when boxes are clamped. H and W should be
multiples of 32 (the authors' padding); with ``dynamic`` the batch, H and W are free.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn

from maedet.fileio import atomic_write_bytes, check_output_path
from maedet.zoo import fuse_bn
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX
from maedet.zoo.detectors import create_detector
from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import PostprocessConfig

from .check import synthetic_images
from .detector_check import DetectorCheck, check_detector
from .detector_graph import DETECTION_OUTPUTS, INPUT_HW, NmsPostprocess, RawOutputs
from .errors import ExportError
from .metadata import COLOR_ORDER, PIXEL_SCALE, apply_metadata, weights_identity
from .validate import check_activation_memory

logger = logging.getLogger(__name__)

__all__ = ["DetectorExportResult", "export_detector_onnx", "postprocess_graph", "raw_graph", "resolve_detector"]

INPUT_NAME = "input"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class DetectorExportResult:
    """What export_detector_onnx wrote, its metadata, and the parity check (None when skipped)."""

    path: Path
    output_names: list[str]
    precision: str
    metadata: dict[str, Any]
    check: DetectorCheck | None = None
    notes: list[str] = field(default_factory=list)


def resolve_detector(
    model: str | GFocalV2,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    structure: Any = None,
) -> GFocalV2:
    """The deploy form: eval mode, the backbone's BN folded (a given module is copied, never changed).

    ``structure`` (a searched MAE-DET backbone) goes with the generic name ``gfl``. ``checkpoint`` may be a
    converted detector folder; ``num_classes`` defaults to 80, or the folder's.
    """
    if isinstance(model, str):
        detector = create_detector(model, checkpoint=checkpoint, num_classes=num_classes, structure=structure)
    elif isinstance(model, GFocalV2):
        if checkpoint is not None or structure is not None:
            raise ExportError("checkpoint and structure apply to a detector name; a module already has its weights.")
        detector = copy.deepcopy(model)
    else:
        raise ExportError(f"model must be a detector name or a GFocalV2 module, not {type(model).__name__}.")
    detector.backbone = fuse_bn(detector.backbone, inplace=True)
    for p in detector.parameters():
        p.requires_grad_(False)
    return detector.eval()


def _trace(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
    opset: int,
) -> onnx.ModelProto:
    """TorchScript-exporter trace to an in-memory model (needs no onnxscript)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _level_axes(detector: GFocalV2) -> dict[str, dict[int, str]]:
    return {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in detector.output_names}


def raw_graph(
    detector: GFocalV2, example: torch.Tensor, *, dynamic: bool, opset: int, embed_preprocess: bool, with_input_hw: bool
) -> onnx.ModelProto:
    """The network: input → ``scores_p3..p7``, ``distances_p3..p7`` (and ``input_hw`` to feed the postprocess)."""
    module = RawOutputs(detector, embed_preprocess, with_input_hw).eval()
    axes = ({INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} | _level_axes(detector)) if dynamic else None
    return _trace(module, (example,), [INPUT_NAME], module.output_names, axes, opset)


def postprocess_graph(
    detector: GFocalV2, raw: Sequence[torch.Tensor], cfg: PostprocessConfig, *, dynamic: bool, opset: int
) -> onnx.ModelProto:
    """Raw outputs + ``input_hw`` → ``num_dets``, ``boxes``, ``scores``, ``labels`` (NMS in the graph)."""
    module = NmsPostprocess(detector.strides, detector.num_classes, cfg).eval()
    names = [*detector.output_names, INPUT_HW]
    axes = None
    if dynamic:
        axes = _level_axes(detector) | {name: {0: "batch"} for name in DETECTION_OUTPUTS}
    return _trace(module, tuple(raw), names, DETECTION_OUTPUTS, axes, opset)


def join_graphs(network: onnx.ModelProto, post: onnx.ModelProto) -> onnx.ModelProto:
    """network ∘ postprocess, linked by name; opset imports and IR version unified first (quantizers bump them)."""
    from onnx import compose

    # internal names of both traces collide (/Constant_output_0 ...): prefix the postprocess's, not its I/O
    post = compose.add_prefix(post, "postprocess/", rename_inputs=False, rename_outputs=False)
    net_opsets = {o.domain: o.version for o in network.opset_import}
    for op in post.opset_import:
        if op.domain in net_opsets and net_opsets[op.domain] != op.version:
            raise ExportError(f"cannot join graphs with opsets {net_opsets[op.domain]} and {op.version}.")
    post.ir_version = network.ir_version
    missing = [o for o in network.opset_import if o.domain not in {p.domain for p in post.opset_import}]
    post.opset_import.extend(missing)
    network = copy.deepcopy(network)
    network.opset_import.extend(o for o in post.opset_import if o.domain not in net_opsets)
    links = [(o.name, o.name) for o in network.graph.output]
    return compose.merge_models(network, post, io_map=links, outputs=list(DETECTION_OUTPUTS))


def _example(detector: GFocalV2, batch: int, h: int, w: int, embed_preprocess: bool) -> torch.Tensor:
    images = torch.from_numpy(synthetic_images(batch, h, w, detector.mean, detector.std, seed=1234))
    return to_pixels(images, detector) if embed_preprocess else images


def to_pixels(images: torch.Tensor, detector: GFocalV2) -> torch.Tensor:
    """Normalised float images → the uint8 pixels they came from (for --embed-preprocess inputs)."""
    mean = torch.tensor(detector.mean).view(1, -1, 1, 1)
    std = torch.tensor(detector.std).view(1, -1, 1, 1)
    return ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def _validate(h: int, w: int, batch: int, precision: str, opset: int) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if batch < 1:
        raise ExportError(f"batch must be at least 1, got {batch}.")
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise ExportError(f"input size {h}×{w} must be positive multiples of 32 (the authors pad to 32).")
    if not 13 <= opset <= 25:
        raise ExportError(f"opset {opset} is outside the range the detector export supports (13..25).")


def _lower_precision(
    network: onnx.ModelProto,
    precision: str,
    detector: GFocalV2,
    example: torch.Tensor,
    calib: str | os.PathLike[str] | None,
    calib_batches: int,
    notes: list[str],
    int8_mode: str = "portable",
) -> onnx.ModelProto:
    """fp16 or INT8 Q/DQ for the network graph, with the backbones' functions (float I/O kept)."""
    if precision == "fp16":
        from onnxruntime.transformers.onnx_model import OnnxModel

        from .precision import to_fp16

        lowered = OnnxModel(to_fp16(network, keep_io_types=True))
        lowered.topological_sort()  # the converter appends its input casts last; onnx.compose checks the order
        return lowered.model
    if precision == "int8":
        from .precision import calibration_batches, quantize_int8

        batch, _, h, w = example.shape
        data, note = calibration_batches(
            calib=calib, batches=calib_batches, batch=batch, input_size=(h, w), mean=detector.mean, std=detector.std
        )
        notes.append(note)
        if example.dtype == torch.uint8:
            data = [to_pixels(torch.from_numpy(d), detector).numpy() for d in data]
        return quantize_int8(network, data, mode=int8_mode)
    return network


def _warn_random_weights(model: str | GFocalV2, checkpoint: str | os.PathLike[str] | None) -> None:
    """A detector named without weights (no checkpoint, no folder or hub repo) exports random weights: say so."""
    if checkpoint is None and isinstance(model, str) and not model.startswith((LOCAL_PREFIX, HUB_PREFIX)):
        logger.warning(
            "no weights given: exporting %s with RANDOM weights (fine for timing, meaningless detections); add "
            "--checkpoint FILE.",
            model,
        )


def export_detector_onnx(
    model: str | GFocalV2,
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    structure: Any = None,
    input_size: Sequence[int] = (800, 1344),
    batch: int = 1,
    dynamic: bool = False,
    nms: bool = True,
    embed_preprocess: bool = False,
    postprocess_cfg: PostprocessConfig | None = None,
    precision: str = "fp32",
    calib: str | os.PathLike[str] | None = None,
    calib_batches: int = 8,
    int8_mode: str = "portable",
    opset: int = 18,
    check: bool = True,
    log: Callable[[str], None] | None = None,
) -> DetectorExportResult:
    """Export a detector to ONNX and, with ``check``, compare it with PyTorch in ONNX Runtime (CPU).

    The default size is the authors' test size for a 4:3 image (800 × 1333 padded to 32). The file is written
    atomically; a failed check does not raise — ``result.check.passed`` says so.
    """
    say = log or (lambda _msg: None)
    h, w = (int(v) for v in input_size)
    _validate(h, w, batch, precision, opset)
    out = check_output_path(out, "ONNX file")
    detector = resolve_detector(model, checkpoint, num_classes, structure)
    check_activation_memory(detector, (batch, 3, h, w), f"exporting {detector.name} at {batch}×{h}×{w}")
    _warn_random_weights(model, checkpoint)  # after the checks, so a refused export stays one line
    cfg = postprocess_cfg or detector.postprocess_cfg
    example = _example(detector, batch, h, w, embed_preprocess)
    notes: list[str] = []

    say(f"exporting {detector.name} network at {batch}×3×{h}×{w}")
    network = raw_graph(
        detector, example, dynamic=dynamic, opset=opset, embed_preprocess=embed_preprocess, with_input_hw=nms
    )
    network = _lower_precision(network, precision, detector, example, calib, calib_batches, notes, int8_mode)
    proto = network
    if nms:
        say("exporting the postprocess (decoding, NonMaxSuppression, top-k)")
        with torch.no_grad():
            raw = RawOutputs(detector, embed_preprocess, with_input_hw=True)(example)
        proto = join_graphs(network, postprocess_graph(detector, raw, cfg, dynamic=dynamic, opset=opset))
    meta = detector_metadata(detector, cfg, nms, embed_preprocess, (h, w), batch, dynamic, precision, opset)
    meta.update(_identity_metadata(model, checkpoint, embed_preprocess, int8_mode if precision == "int8" else None))
    apply_metadata(proto, meta)
    data = proto.SerializeToString()

    report = None
    if check:
        say("checking in ONNX Runtime (CPU) against PyTorch")
        report = check_detector(detector, cfg, data, network.SerializeToString(), example, precision, nms)
    atomic_write_bytes(out, data)
    return DetectorExportResult(out, [o.name for o in proto.graph.output], precision, meta, report, notes)


def _identity_metadata(
    model: str | GFocalV2, checkpoint: str | os.PathLike[str] | None, embed_preprocess: bool, int8_mode: str | None
) -> dict[str, Any]:
    """The keys a backbone file carries too: which weights made it, how an image becomes the input, the INT8 layout."""
    weights, sha256 = weights_identity(model, checkpoint)
    meta: dict[str, Any] = {
        "weights": weights,
        "color_order": COLOR_ORDER,
        "pixel_scale": "in the graph (uint8 input)" if embed_preprocess else PIXEL_SCALE,
    }
    if sha256 is not None:
        meta["weights_sha256"] = sha256
    if int8_mode is not None:
        meta["int8_mode"] = int8_mode
    return meta


def detector_metadata(
    detector: GFocalV2,
    cfg: PostprocessConfig,
    nms: bool,
    embed_preprocess: bool,
    input_hw: tuple[int, int],
    batch: int,
    dynamic: bool,
    precision: str,
    opset: int,
) -> dict[str, Any]:
    """What a consumer (maedet-detect, maedet-eval, the bench) needs to run the file without the model."""
    from maedet import __version__

    return {
        "model_name": detector.name,
        "task": "detection",
        "outputs": "detections" if nms else "raw",
        "input_name": INPUT_NAME,
        "input_size": [3, *input_hw],
        "input_dtype": "uint8" if embed_preprocess else "float32",
        "batch": batch,
        "dynamic": dynamic,
        "mean": list(detector.mean),
        "std": list(detector.std),
        "num_classes": detector.num_classes,
        "cls_channels": detector.cls_channels,
        "strides": list(detector.strides),
        "postprocess": {
            "nms_pre": cfg.nms_pre,
            "score_thr": cfg.score_thr,
            "iou_thr": cfg.iou_thr,
            "max_per_img": cfg.max_per_img,
        },
        "precision": precision,
        "opset": opset,
        "maedet_version": __version__,
    }
