"""``maedet-export``: a thin command line over :func:`maedet.export.export_onnx`, :func:`~maedet.export.build_engine`
and :func:`~maedet.export.check_engine`.

Exit codes: 0 done (and checked), 1 the parity check failed its tolerance (the file is kept for inspection),
2 bad input or a missing optional dependency (one sentence on stderr; no partial file), 130 interrupted.

Every check that can fail runs before any work (:func:`_preflight`): the output paths (the ONNX file, the engine,
its sidecar and the timing cache must be different files, and the ONNX file derived from ``--trt`` never replaces
an existing one), the ``--calib`` folder, and TensorRT, Polygraphy and a GPU for ``--trt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from maedet.cli import deprecated_alias, make_parser, run_cli
from maedet.sizes import SIZE_FORMS, OneSizeAction
from maedet.zoo.gfl_postprocess import PostprocessConfig

from .check import CheckReport
from .detector import detector_reference
from .detector_check import DetectionComparison, DetectorCheck
from .errors import ExportError, MissingDependencyError
from .pipeline import export_onnx, kind_of
from .request import DETECTOR, ExportRequest, validate_request

__all__ = ["build_parser", "main"]

PROG = "maedet-export"
logger = logging.getLogger(__name__)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        help="timm model (maedet_s/m/l, 'maedet' with --structure, resnet50, NAME.TAG), local-dir:FOLDER, "
        "hf-hub:ORG/REPO or a converted folder's path; or a detector: maedet_m_gfl...",
    )
    p.add_argument(
        "--info",
        metavar="FILE",
        help="print the metadata of an exported .onnx (or an engine's sidecar, or an OpenVINO IR folder)",
    )
    p.add_argument("--structure", metavar="FILE", help="structure file (JSON or the authors' txt) for 'maedet'")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="weights (.pth/.pt, loaded with weights_only, .safetensors, or a converted folder); loaded strictly",
    )
    weights.add_argument(
        "--pretrained", action="store_true", help="the model's default pretrained weights through timm (downloaded)"
    )
    p.add_argument("--onnx", metavar="OUT", help="ONNX file to write")
    p.add_argument("--trt", metavar="OUT", help="TensorRT engine to build (the ONNX is written first)")
    p.add_argument(
        "--openvino",
        metavar="DIR",
        help="also write the OpenVINO IR (DIR/model.xml + model.bin), checked against PyTorch in OpenVINO "
        "(pip install 'maedet[openvino]')",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--features", dest="outputs", action="store_const", const="features", help="C2..C5 (default)")
    kind.add_argument("--logits", dest="outputs", action="store_const", const="logits", help="classifier output")
    p.set_defaults(outputs="features")
    p.add_argument("--out-indices", type=int, nargs="+", metavar="I", help="feature levels (timm out_indices)")
    p.add_argument("--num-classes", type=int, help="classes for --logits or a detector (default: the model's / 80)")
    p.add_argument(
        "--input-size",
        nargs="+",
        action=OneSizeAction,
        metavar="SIZE",
        help=f"one input size: {SIZE_FORMS} (default 640x640; 800x1344 for detectors)",
    )
    p.add_argument(
        "--batch-size", dest="batch", type=int, default=1, help="images per run (the input's first dimension)"
    )
    deprecated_alias(p, "--batch", "--batch-size")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset to write")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim (pip install 'maedet[simplify]')")


def _add_precision_options(p: argparse.ArgumentParser) -> None:
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--half", action="store_true", help="fp16 weights and activations")
    prec.add_argument("--int8", action="store_true", help="static INT8, Q/DQ form")
    p.add_argument("--io-half", action="store_true", help="with --half: fp16 input and outputs too")
    p.add_argument(
        "--int8-mode",
        choices=("portable", "cpu"),
        default="portable",
        help="portable: symmetric int8 for TensorRT and ONNX Runtime (default); cpu: uint8 activations, "
        "~2x faster in ONNX Runtime on x86 CPUs, not loadable by TensorRT",
    )
    p.add_argument("--calib", metavar="DIR", help="with --int8: folder of calibration images")
    p.add_argument(
        "--calib-batches",
        type=int,
        metavar="N",
        help="calibration batches (default: 128 images sampled from --calib, or all of a smaller folder; "
        "8 synthetic batches without --calib)",
    )
    p.add_argument("--calib-seed", type=int, metavar="S", help="which --calib images are sampled (default 0)")
    p.add_argument("--check", dest="check", action="store_true", default=True, help="compare with PyTorch (default)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")


def _add_tensorrt_options(p: argparse.ArgumentParser) -> None:
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--workspace", type=float, default=4.0, metavar="GiB", help="builder workspace (default 4)")
    trt.add_argument("--timing-cache", metavar="FILE", help="read and update a TensorRT timing cache")
    trt.add_argument("--min-batch", type=int, help="--dynamic profile minimum batch (default 1)")
    trt.add_argument("--max-batch", type=int, help="--dynamic profile maximum batch (default max(batch, 8))")
    trt.add_argument(
        "--min-size", nargs="+", action=OneSizeAction, metavar="SIZE", help="profile minimum (default opt/2)"
    )
    trt.add_argument(
        "--max-size", nargs="+", action=OneSizeAction, metavar="SIZE", help="profile maximum (default opt×2)"
    )


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("detectors (maedet_s_gfl, maedet_m_gfl, maedet_l_gfl, resnet50_gfl, ...)")
    group.add_argument("--no-nms", dest="nms", action="store_false", help="raw per-level outputs, no NMS in the graph")
    group.add_argument("--embed-preprocess", action="store_true", help="uint8 RGB input, normalised in the graph")
    group.add_argument("--score-thr", type=float, help="NMS score threshold (default 0.05, the authors')")
    group.add_argument("--iou-thr", type=float, help="NMS IoU threshold (default 0.6)")
    group.add_argument("--max-det", type=int, help="detections per image, K of the outputs (default 100)")
    group.add_argument("--nms-pre", type=int, help="best points per level before NMS (default 1000)")


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("INT8 under an accuracy budget (docs/int8.md)")
    group.add_argument(
        "--max-ap-drop", type=float, metavar="P", help="with --int8: keep the fewest layers in float that hold the "
        "AP drop against fp32 within P points (0-100 scale), measured on --data/--images",
    )  # fmt: skip
    group.add_argument("--data", metavar="FILE", help="COCO annotations of the images the AP is measured on")
    group.add_argument("--images", metavar="DIR", help="folder of the annotated images")
    group.add_argument("--max-float-layers", type=int, metavar="N", help="give up after N float layers (default all)")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Export a MAE-DET (or any timm) backbone to ONNX / TensorRT, checked against PyTorch.")
    _add_model_options(p)
    _add_precision_options(p)
    _add_tensorrt_options(p)
    _add_detector_options(p)
    _add_budget_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def check_table(report: CheckReport, title: str) -> Table:
    """Per-output figures; a detections comparison (an engine check of an NMS file) as its one row."""
    if report.detections is not None:
        table = _comparison_table(f"{title} ({report.precision}; pass: {report.tolerance})")
        _comparison_row(table, "detections", report.detections, required=True)
        return table
    table = Table(title=f"{title} ({report.precision}; pass: {report.tolerance})")
    for col in ("output", "shape", "max abs err", "max rel err", "cosine", "ok"):
        table.add_column(col, justify="left" if col in ("output", "shape") else "right")
    for o in report.outputs.values():
        table.add_row(
            o.name,
            "×".join(map(str, o.shape)),
            f"{o.max_abs:.3e}",
            f"{o.max_rel:.3e}",
            f"{o.cosine:.6f}",
            "yes" if o.passed else "[red]NO[/red]",
        )
    return table


def _comparison_table(title: str) -> Table:
    table = Table(title=title)
    for col in ("compared", "items", "agreement", "max box rel / raw rel", "max score abs / cosine", "ok"):
        table.add_column(col, justify="left" if col in ("compared", "agreement") else "right")
    return table


def _comparison_row(table: Table, label: str, c: DetectionComparison | None, required: bool) -> None:
    if c is not None:
        ok = "yes" if c.passed else "[red]NO[/red]" if required else f"{c.matched}/{c.detections} match"
        same = f"count {'=' if c.same_count else '≠'}, labels {'=' if c.same_labels else '≠'}"
        table.add_row(label, str(c.detections), same, f"{c.max_box_rel:.2e}", f"{c.max_score_abs:.2e}", ok)


def detector_check_table(check: DetectorCheck, runtime: str = "ONNX Runtime CPU") -> Table:
    """Raw outputs (worst of all levels) and the detection comparisons, one row each."""
    table = _comparison_table(f"{runtime} vs PyTorch ({check.precision})")
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


def _info(path: str, as_json: bool, console: Console) -> int:
    from maedet.engine_sidecar import read_sidecar

    from .metadata import format_metadata, read_metadata

    if path.endswith((".engine", ".plan", ".trt")):
        data = read_sidecar(path)
        meta = {k: v for k, v in data.items() if k != "onnx_metadata"}
        meta.update({f"onnx.{k}": v for k, v in data.get("onnx_metadata", {}).items()})
    elif Path(path).is_dir() or path.endswith(".xml"):  # an OpenVINO IR: its rt_info
        from .openvino import read_ir_metadata

        meta = read_ir_metadata(path)
    else:
        meta = read_metadata(path)
        if "maedet_version" not in meta:  # empty, or only other producers' keys
            raise ExportError(f"{path!r} holds no maedet metadata (it was not written by maedet-export).")
    if as_json:
        print(json.dumps(meta, indent=1))
        return 0
    table = Table(title=path)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in format_metadata(meta):
        table.add_row(key, value)
    console.print(table)
    return 0


def _profile(args: argparse.Namespace, in_chans: int = 3) -> Any:
    from .tensorrt import profile_shapes

    return profile_shapes(
        batch=args.batch,
        input_size=args.input_size,
        dynamic=args.dynamic,
        in_chans=in_chans,
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        min_size=args.min_size,
        max_size=args.max_size,
    )


def _validate(args: argparse.Namespace) -> None:
    """What the request cannot say: where to write, and what TensorRT can build."""
    if not args.onnx and not args.trt and not args.openvino:
        raise ExportError("say where to write: --onnx OUT.onnx, --trt OUT.engine and/or --openvino DIR.")
    if args.trt and args.int8 and args.int8_mode == "cpu":
        raise ExportError("--int8-mode cpu writes uint8 asymmetric Q/DQ, which TensorRT cannot load; use the default.")
    if args.trt:
        from .tensorrt import validate_workspace

        validate_workspace(args.workspace)  # fail before the (slow) ONNX export, not after
        _profile(args)


def _postprocess_cfg(args: argparse.Namespace) -> PostprocessConfig | None:
    """The NMS settings asked for; None (the detector's own, e.g. a converted folder's) when no flag is given."""
    if all(getattr(args, k) is None for k in ("nms_pre", "score_thr", "iou_thr", "max_det")):
        return None
    base = PostprocessConfig()
    return PostprocessConfig(
        nms_pre=args.nms_pre if args.nms_pre is not None else base.nms_pre,
        score_thr=args.score_thr if args.score_thr is not None else base.score_thr,
        iou_thr=args.iou_thr if args.iou_thr is not None else base.iou_thr,
        max_per_img=args.max_det if args.max_det is not None else base.max_per_img,
    )


def _request(args: argparse.Namespace) -> ExportRequest:
    """The flags as one ExportRequest: they carry its field names, except the precision and the NMS settings."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExportRequest) if hasattr(args, f.name)}
    given.update(
        precision="fp16" if args.half else "int8" if args.int8 else "fp32",
        input_size=tuple(args.input_size),
        postprocess_cfg=_postprocess_cfg(args),
    )
    return ExportRequest(**given)


def _onnx_path(args: argparse.Namespace) -> Path:
    """--onnx, or the engine's name with .onnx (the ONNX file an engine is built from is kept beside it), or the IR
    folder's name with .onnx."""
    if args.onnx:
        return Path(args.onnx)
    return Path(args.trt).with_suffix(".onnx") if args.trt else Path(args.openvino.rstrip("/\\") + ".onnx")


def _derived_from(args: argparse.Namespace) -> str:
    return "--trt" if args.trt else "--openvino"


def _refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """No output may be (or link to) a file this run reads: the model folder, checkpoint, structure or images."""
    from maedet.fileio import refuse_overwriting_inputs
    from maedet.zoo.detector_folder import LOCAL_PREFIX

    inputs = {"model folder": args.model.removeprefix(LOCAL_PREFIX), "--checkpoint": args.checkpoint}
    inputs.update({"--structure": args.structure, "--calib folder": args.calib, "--data": args.data})
    outputs = {"ONNX file": _onnx_path(args)}
    folders = {"OpenVINO IR folder": args.openvino} if args.openvino else {}
    if args.trt:
        from maedet.engine_sidecar import sidecar_path

        outputs.update({"TensorRT engine": args.trt, "engine sidecar": sidecar_path(Path(args.trt))})
    refuse_overwriting_inputs(inputs, outputs, folders)


def _check_paths(args: argparse.Namespace) -> None:
    """Every file this run writes is a distinct path, no input is overwritten, and no ONNX file is replaced unless
    --onnx names it."""
    from maedet.fileio import check_output_path

    _refuse_overwriting_inputs(args)
    onnx_path = check_output_path(_onnx_path(args), "ONNX file")
    if not args.onnx and onnx_path.exists():
        raise ExportError(
            f"{_derived_from(args)} {args.trt or args.openvino} would replace {str(onnx_path)!r} with the ONNX file "
            f"it is made from; pass --onnx {onnx_path} to replace it, or --onnx with another path."
        )
    if not args.trt:
        return
    from maedet.engine_sidecar import sidecar_path

    engine = check_output_path(args.trt, "TensorRT engine")
    sidecar = check_output_path(sidecar_path(engine), "engine sidecar")
    named = {
        "--onnx" if args.onnx else f"the ONNX file derived from {_derived_from(args)}": onnx_path,
        "--trt": engine,
        "the engine's sidecar": sidecar,
    }
    if args.timing_cache:
        named["--timing-cache"] = Path(args.timing_cache)
    seen: dict[Path, str] = {}
    for label, path in named.items():
        other = seen.setdefault(path.resolve(), label)
        if other != label:
            raise ExportError(f"{other} and {label} are the same file {str(path)!r}; give each its own path.")


def _require_tensorrt_stack() -> None:
    """--trt needs TensorRT, Polygraphy and a GPU: say so before the export, not after it."""
    from maedet.runtime import INSTALL_HINT, gpu_identity

    missing = []
    for module, name in (("tensorrt", "TensorRT"), ("polygraphy.backend.trt", "Polygraphy")):
        try:
            __import__(module)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(
            f"--trt needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{INSTALL_HINT} on an NVIDIA GPU machine (or drop --trt to write only the ONNX file); nothing was written."
        )
    if gpu_identity()[0] is None:
        raise MissingDependencyError(
            "--trt needs an NVIDIA GPU (TensorRT builds an engine on the GPU it will run on) and none is visible; "
            "drop --trt to write only the ONNX file; nothing was written."
        )


def _preflight(args: argparse.Namespace) -> None:
    """Everything that can be refused, refused before the (slow) export: TensorRT first (a machine without it
    cannot build an engine whatever the paths), then the paths and the calibration folder."""
    if args.trt:
        _require_tensorrt_stack()
    _check_paths(args)
    if args.int8 and args.calib is not None:
        from .precision import calibration_files

        calibration_files(args.calib, args.batch)


def _engine(args: argparse.Namespace, onnx_path: Path, result: Any, console: Console) -> tuple[dict[str, Any], int]:
    """Build the engine (TensorRT 10+ imports ``NonMaxSuppression`` as its NMS layer) and, with --check, compare it
    with ONNX Runtime on the same images; returns (JSON summary, exit code)."""
    from .engine_check import check_engine
    from .tensorrt import build_engine

    with console.status("building TensorRT engine"):
        build = build_engine(
            onnx_path,
            args.trt,
            precision=result.precision,
            profile=_profile(args, int(result.metadata["input_size"][0])),
            workspace_gib=args.workspace,
            timing_cache=args.timing_cache,
            metadata=result.metadata,
        )
    console.print(
        f"wrote {args.trt} and {build.sidecar_path} (TensorRT {build.tensorrt_version}, {build.gpu_name})",
        markup=False,
    )
    summary = build.summary()
    if not args.check:
        return summary, 0
    report = check_engine(args.trt, onnx_path, batch=args.batch)
    summary["check"] = report.to_dict()
    console.print(check_table(report, "TensorRT vs ONNX Runtime CPU"))
    return summary, 0 if report.passed else 1


def _show_check(check: Any, console: Console, runtime: str = "ONNX Runtime CPU") -> None:
    """The parity check as a table, then what failed (or, for a detector, the one-sentence verdict)."""
    if isinstance(check, DetectorCheck):
        console.print(detector_check_table(check, runtime))
        console.print(f"check ({runtime}): {check.sentence()}", markup=False, soft_wrap=True)
        return
    console.print(check_table(check, f"{runtime} vs PyTorch fp32"))
    if not check.passed:
        console.print(f"check failed: {check.failure()}", markup=False, style="red", soft_wrap=True)


def _export(args: argparse.Namespace, request: ExportRequest, console: Console) -> int:
    onnx_path = _onnx_path(args)
    result = export_onnx(args.model, onnx_path, request)
    size_mb = onnx_path.stat().st_size / 1e6
    console.print(
        f"wrote {onnx_path} ({size_mb:.1f} MB, {result.precision}, outputs {', '.join(result.output_names)})",
        markup=False,
    )
    summary: dict[str, Any] = {
        "onnx": str(onnx_path),
        "precision": result.precision,
        "output_names": result.output_names,
        "check": result.check.to_dict() if result.check else None,
    }
    code = 0
    if result.check is not None:
        _show_check(result.check, console)
        code = 0 if result.check.passed else 1
    if result.openvino is not None:
        code = max(code, _show_openvino(result, summary, console))
    if args.trt:
        summary["engine"], engine_code = _engine(args, onnx_path, result, console)
        code = code or engine_code
    if "int8_budget" in result.metadata:
        summary["int8_budget"] = {k: result.metadata[k] for k in ("int8_float_layers", "int8_budget")}
        if not args.json:
            _show_budget(result.metadata, Console())
    if args.json:
        print(json.dumps(summary, indent=1))
    return code


def _show_openvino(result: Any, summary: dict[str, Any], console: Console) -> int:
    """The IR written and its check in OpenVINO; returns the exit code the check asks for (0 or 1)."""
    console.print(f"wrote {result.openvino} and {result.openvino.with_suffix('.bin').name} (OpenVINO IR)", markup=False)
    summary["openvino"] = str(result.openvino.parent)
    check = result.openvino_check
    summary["openvino_check"] = check.to_dict() if check is not None else None
    if check is None:
        return 0
    _show_check(check, console, "OpenVINO CPU")
    return 0 if check.passed else 1


def _show_budget(meta: dict[str, Any], console: Console) -> None:
    """The budgeted INT8 search as a table (score, drop, ONNX Runtime CPU latency per file), then the float layers."""
    budget, layers = meta["int8_budget"], meta["int8_float_layers"]
    name, latency = budget["measure"], budget["latency_ms"]
    table = Table(title=f"INT8 within {budget['max_drop']:g} {name} of fp32 (latency: ONNX Runtime CPU)")
    for col in ("file", name, "drop", "ms", "vs fp32"):
        table.add_column(col, justify="left" if col == "file" else "right")
    rows = (("fp32", "fp32"), ("full INT8", "int8"), (f"INT8, {len(layers)} layers float", "final"))
    for label, key in rows:
        ms = latency["budgeted" if key == "final" else key]
        drop = budget["fp32"] - budget[key]
        table.add_row(label, f"{budget[key]:.2f}", f"{drop:.2f}", f"{ms:.2f}", f"{latency['fp32'] / ms:.2f}x")
    console.print(table)
    console.print(
        f"float layers ({len(layers)} of {budget['candidates']}): {', '.join(layers) or 'none'}",
        markup=False,
        soft_wrap=True,  # node names whole, for copying
    )


def _accuracy_measure(args: argparse.Namespace, kind: str, factory: Any) -> Any:
    """The measure --max-ap-drop uses, made from --data/--images by the detect layer's factory (None without)."""
    if args.data is None and args.images is None:
        return None
    if args.data is None or args.images is None:
        raise ExportError("--data and --images go together: the annotation file and the folder of its images.")
    if factory is None:
        raise ExportError("--data/--images need the maedet-export command (it brings the COCO AP measure).")
    if kind != DETECTOR:
        raise ExportError("--data/--images measure a detector's COCO AP; a backbone has none.")
    return factory(args.data, args.images)


def main(argv: Sequence[str] | None = None, accuracy_measure_factory: Any = None) -> int:
    """``maedet-export``; ``accuracy_measure_factory(data, images)`` makes the measure for --max-ap-drop (the
    detect layer's COCO AP, plugged in by :func:`maedet.detect.accuracy_measure.export_main`)."""
    parser = build_parser()

    def handle(args: argparse.Namespace) -> int:
        if args.info:  # a result, like every tool's: on stdout
            return _info(args.info, args.json, Console())
        if args.model is None:
            raise ExportError("give a MODEL to export, or --info FILE.")
        args.model = detector_reference(args.model)  # a detector folder's plain path, as maedet-train prints it
        kind = kind_of(args.model)
        args.input_size = args.input_size or kind.default_size
        args.accuracy_measure = _accuracy_measure(args, kind.name, accuracy_measure_factory)
        request = _request(args)
        validate_request(request, kind.name, kind.min_opset)
        _validate(args)
        _preflight(args)
        return _export(args, request, Console(stderr=True))

    return run_cli(parser, handle, argv)


if __name__ == "__main__":
    sys.exit(main())
