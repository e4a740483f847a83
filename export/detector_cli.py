"""The detector part of ``maedet-export``: ``maedet-export maedet_m_gfl --onnx det.onnx`` writes an end-to-end
detector (NMS inside), ``--no-nms`` the raw per-level outputs; ``--trt`` builds a TensorRT engine from it.

The main CLI recognises detector names (:func:`is_detector`) and hands the parsed arguments to
:func:`run_detector_export`; the detector-only flags come from :func:`add_detector_options`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX, is_detector_folder, local_detector_folder
from maedet.zoo.detectors import GENERIC_NAME, list_detectors
from maedet.zoo.gfl_postprocess import PostprocessConfig

from .detector_check import DetectionComparison, DetectorCheck
from .errors import ExportError

__all__ = [
    "add_detector_options",
    "detector_reference",
    "is_detector",
    "refuse_detector_options",
    "run_detector_export",
]

logger = logging.getLogger(__name__)
DEFAULT_DETECTOR_SIZE = (800, 1344)  # (H, W): the authors' test scale for landscape images, padded to 32


def detector_reference(name: str | None) -> str | None:
    """``name``, with a plain path to a trained or converted detector folder (what ``maedet-train`` and
    ``maedet-convert`` print) written as the ``local-dir:FOLDER`` reference the model factory takes."""
    if name is None or name.startswith((LOCAL_PREFIX, HUB_PREFIX)) or name in list_detectors():
        return name
    return LOCAL_PREFIX + name if local_detector_folder(name) is not None else name


def is_detector(name: str | None) -> bool:
    """A detector name, or ``local-dir:FOLDER`` of a converted detector (maedet-convert --model NAME_gfl)."""
    if name is not None and name.startswith(LOCAL_PREFIX):
        return is_detector_folder(name[len(LOCAL_PREFIX) :])
    return name is not None and name in list_detectors()


def add_detector_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("detectors (maedet_s_gfl, maedet_m_gfl, maedet_l_gfl, resnet50_gfl, ...)")
    group.add_argument("--no-nms", dest="nms", action="store_false", help="raw per-level outputs, no NMS in the graph")
    group.add_argument("--embed-preprocess", action="store_true", help="uint8 RGB input, normalised in the graph")
    group.add_argument("--score-thr", type=float, help="NMS score threshold (default 0.05, the authors')")
    group.add_argument("--iou-thr", type=float, help="NMS IoU threshold (default 0.6)")
    group.add_argument("--max-det", type=int, help="detections per image, K of the outputs (default 100)")
    group.add_argument("--nms-pre", type=int, help="best points per level before NMS (default 1000)")


def refuse_detector_options(args: argparse.Namespace) -> None:
    """A backbone export given detector-only flags: one sentence instead of silently ignoring them."""
    given = [flag for flag, on in (("--no-nms", not args.nms), ("--embed-preprocess", args.embed_preprocess),
             ("--score-thr", args.score_thr is not None), ("--iou-thr", args.iou_thr is not None),
             ("--max-det", args.max_det is not None), ("--nms-pre", args.nms_pre is not None)) if on]  # fmt: skip
    if given:
        raise ExportError(f"{', '.join(given)} apply to detectors (e.g. maedet_m_gfl), not to {args.model!r}.")


def _postprocess_cfg(args: argparse.Namespace) -> PostprocessConfig | None:
    """The settings asked for; None (the detector's own, e.g. a converted folder's) when no flag is given."""
    if all(getattr(args, k) is None for k in ("nms_pre", "score_thr", "iou_thr", "max_det")):
        return None
    base = PostprocessConfig()
    return PostprocessConfig(
        nms_pre=args.nms_pre if args.nms_pre is not None else base.nms_pre,
        score_thr=args.score_thr if args.score_thr is not None else base.score_thr,
        iou_thr=args.iou_thr if args.iou_thr is not None else base.iou_thr,
        max_per_img=args.max_det if args.max_det is not None else base.max_per_img,
    )


def _validate(args: argparse.Namespace) -> None:
    if not args.onnx and not args.trt:
        raise ExportError("say where to write: --onnx OUT.onnx and/or --trt OUT.engine.")
    if args.model == GENERIC_NAME and args.structure is None and not is_detector_folder(args.checkpoint):
        raise ExportError("detector 'gfl' needs --structure FILE (a searched MAE-DET backbone).")
    if args.model != GENERIC_NAME and args.structure is not None:
        raise ExportError(f"{args.model!r} has a fixed backbone; a structure goes with 'gfl'.")
    unsupported = [flag for flag, on in (("--logits", args.outputs == "logits"), ("--out-indices", args.out_indices),
                   ("--io-half", args.io_half), ("--simplify", args.simplify)) if on]  # fmt: skip
    if unsupported:
        raise ExportError(f"{', '.join(unsupported)} apply to backbones, not to detectors.")
    if args.int8_mode != "portable" and not args.int8:
        raise ExportError("--int8-mode needs --int8.")
    if args.trt and args.int8 and args.int8_mode == "cpu":
        raise ExportError("--int8-mode cpu writes uint8 asymmetric Q/DQ, which TensorRT cannot load; use the default.")


def _comparison_row(table: Table, label: str, c: DetectionComparison | None, required: bool) -> None:
    if c is not None:
        ok = "yes" if c.passed else "[red]NO[/red]" if required else f"{c.matched}/{c.detections} match"
        same = f"count {'=' if c.same_count else '≠'}, labels {'=' if c.same_labels else '≠'}"
        table.add_row(label, str(c.detections), same, f"{c.max_box_rel:.2e}", f"{c.max_score_abs:.2e}", ok)


def detector_check_table(check: DetectorCheck) -> Table:
    """Raw outputs (worst of all levels) and the detection comparisons, one row each."""
    table = Table(title=f"ONNX Runtime CPU vs PyTorch ({check.precision})")
    for col in ("compared", "items", "agreement", "max box rel / raw rel", "max score abs / cosine", "ok"):
        table.add_column(col, justify="left" if col in ("compared", "agreement") else "right")
    worst_rel = max(o.max_rel for o in check.raw.outputs.values())
    worst_cos = min(o.cosine for o in check.raw.outputs.values())
    table.add_row(
        "raw outputs",
        str(len(check.raw.outputs)),
        check.raw.tolerance,
        f"{worst_rel:.2e}",
        f"{worst_cos:.6f}",
        "yes" if check.raw.passed else "[red]NO[/red]",
    )
    required = check.precision == "fp32"
    _comparison_row(table, "detections (file)", check.detections, required)
    _comparison_row(table, "detections (probe, score > 0)", check.probe, required)
    return table


def run_detector_export(args: argparse.Namespace, console: Console) -> int:
    """Export (and check) a detector from the parsed ``maedet-export`` arguments; returns the exit code."""
    from .detector_onnx import export_detector_onnx

    _validate(args)
    onnx_path = Path(args.onnx) if args.onnx else Path(args.trt).with_suffix(".onnx")
    precision = "fp16" if args.half else "int8" if args.int8 else "fp32"
    size = tuple(args.input_size) if args.input_size is not None else DEFAULT_DETECTOR_SIZE
    result = export_detector_onnx(
        args.model,
        onnx_path,
        checkpoint=args.checkpoint,
        num_classes=args.num_classes,
        structure=args.structure,
        input_size=size,
        batch=args.batch,
        dynamic=args.dynamic,
        nms=args.nms,
        embed_preprocess=args.embed_preprocess,
        postprocess_cfg=_postprocess_cfg(args),
        precision=precision,
        calib=args.calib,
        calib_batches=args.calib_batches,
        int8_mode=args.int8_mode,
        opset=args.opset,
        check=args.check,
        log=logger.info,
    )
    console.print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, {precision}, outputs "
                  f"{', '.join(result.output_names)})", markup=False)  # fmt: skip
    summary: dict[str, Any] = {"onnx": str(onnx_path), "precision": precision, "output_names": result.output_names}
    code = 0
    if result.check is not None:
        summary["check"] = result.check.to_dict()
        console.print(detector_check_table(result.check))
        console.print(f"check: {result.check.sentence()}", markup=False, soft_wrap=True)
        code = 0 if result.check.passed else 1
    if args.trt:
        summary["engine"], engine_code = _engine(args, onnx_path, result, console)
        code = code or engine_code
    if args.json:
        print(json.dumps(summary, indent=1))
    return code


def _engine(args: argparse.Namespace, onnx_path: Path, result: Any, console: Console) -> tuple[dict[str, Any], int]:
    """Build the TensorRT engine with the backbones' builder (TensorRT 10+ imports ``NonMaxSuppression`` as its
    NMS layer) and, with --check, compare it with ONNX Runtime CPU on the same images."""
    from .tensorrt import build_engine, profile_shapes

    profile = profile_shapes(
        batch=args.batch,
        input_size=tuple(result.metadata["input_size"][1:]),
        dynamic=args.dynamic,
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    with console.status("building TensorRT engine"):
        build = build_engine(
            onnx_path,
            args.trt,
            precision=result.precision,
            profile=profile,
            workspace_gib=args.workspace,
            timing_cache=args.timing_cache,
            metadata=result.metadata,
        )
    console.print(f"wrote {args.trt} (TensorRT {build.tensorrt_version}, {build.gpu_name})", markup=False)
    summary = build.summary()
    if not args.check:
        return summary, 0
    comparison = check_detector_engine(args.trt, onnx_path, batch=args.batch)
    summary["check"] = comparison
    console.print(f"TensorRT vs ONNX Runtime CPU: {json.dumps(comparison)}", markup=False)
    return summary, 0 if comparison["passed"] else 1


def check_detector_engine(engine_path: str | Path, onnx_path: Path, batch: int = 1) -> dict[str, Any]:
    """The engine and ONNX Runtime on the same synthetic images: detections compared (NMS files) or raw outputs
    within the engine tolerance (--no-nms files)."""
    import dataclasses

    import numpy as np

    from maedet.runtime import TrtEngine, ort_session, run_session

    from .check import ENGINE_TOLERANCES, compare_outputs, synthetic_images
    from .detector_check import compare_detections
    from .detector_metadata import read_detector_metadata

    meta = read_detector_metadata(onnx_path)
    h, w = meta["input_size"][1:]
    images = synthetic_images(batch, h, w, meta["mean"], meta["std"], seed=77)
    if meta["input_dtype"] == "uint8":
        mean, std = np.asarray(meta["mean"]).reshape(1, -1, 1, 1), np.asarray(meta["std"]).reshape(1, -1, 1, 1)
        images = np.clip(np.round((images * std + mean) * 255.0), 0, 255).astype(np.uint8)
    got = TrtEngine.load(engine_path).run(images)
    ref = run_session(ort_session(onnx_path, what="the ONNX file"), images)
    if meta["outputs"] == "detections":
        comparison = compare_detections(ref, got)
        return {**dataclasses.asdict(comparison), "passed": comparison.passed}
    report = compare_outputs(ref, got, meta["precision"], tolerance=ENGINE_TOLERANCES[meta["precision"]])
    return report.to_dict()
