"""``maedet-export``: a thin command line over :func:`maedet.export.export_onnx` and the TensorRT builder.

Exit codes: 0 done (and checked), 1 the parity check failed its tolerance (the file is kept for inspection),
2 bad input or a missing optional dependency (one sentence on stderr; no partial file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .check import TOLERANCES, CheckReport, Tolerance, compare_outputs, onnx_session, run_onnx, synthetic_images
from .errors import ExportError
from .metadata import format_metadata, read_metadata

__all__ = ["build_parser", "main"]

# A TensorRT fp32 engine may use TF32 tensor cores; fp16/int8 engines are compared with the same-precision ONNX.
ENGINE_TOLERANCES = {
    "fp32": Tolerance(max_rel=1e-2, min_cosine=0.9999),
    "fp16": TOLERANCES["fp16"],
    "int8": TOLERANCES["int8"],
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maedet-export",
        description="Export a MAE-DET (or any timm) backbone to ONNX / TensorRT, checked against PyTorch.",
    )
    p.add_argument("model", nargs="?", help="timm model name: maedet_s/m/l, 'maedet' with --structure, resnet50...")
    p.add_argument("--info", metavar="FILE", help="print the metadata of an exported .onnx (or an engine's sidecar)")
    p.add_argument("--structure", metavar="FILE", help="structure file (JSON or the authors' txt) for 'maedet'")
    p.add_argument("--checkpoint", metavar="FILE", help="weights (.pth/.pt, loaded with weights_only, or .safetensors)")
    p.add_argument("--onnx", metavar="OUT", help="ONNX file to write")
    p.add_argument("--trt", metavar="OUT", help="TensorRT engine to build (the ONNX is written first)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--features", dest="outputs", action="store_const", const="features", help="C2..C5 (default)")
    kind.add_argument("--logits", dest="outputs", action="store_const", const="logits", help="classifier output")
    p.set_defaults(outputs="features")
    p.add_argument("--out-indices", type=int, nargs="+", metavar="I", help="feature levels (timm out_indices)")
    p.add_argument("--num-classes", type=int, help="classifier size for --logits (default: the model's)")
    p.add_argument("--input-size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim (pip install 'maedet[simplify]')")
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
    p.add_argument("--calib-batches", type=int, default=8, metavar="N", help="calibration batches (default 8)")
    p.add_argument("--check", dest="check", action="store_true", default=True, help="compare with PyTorch (default)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--workspace", type=float, default=4.0, metavar="GiB", help="builder workspace (default 4)")
    trt.add_argument("--timing-cache", metavar="FILE", help="read and update a TensorRT timing cache")
    trt.add_argument("--min-batch", type=int, help="--dynamic profile minimum batch (default 1)")
    trt.add_argument("--max-batch", type=int, help="--dynamic profile maximum batch (default max(batch, 8))")
    trt.add_argument("--min-size", type=int, nargs=2, metavar=("H", "W"), help="profile minimum (default opt/2)")
    trt.add_argument("--max-size", type=int, nargs=2, metavar=("H", "W"), help="profile maximum (default opt×2)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return p


def _check_table(report: CheckReport, title: str) -> Table:
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


def _info(path: str, as_json: bool, console: Console) -> int:
    from .tensorrt import read_sidecar

    if path.endswith((".engine", ".plan", ".trt")):
        data = read_sidecar(path)
        meta = {k: v for k, v in data.items() if k != "onnx_metadata"}
        meta.update({f"onnx.{k}": v for k, v in data.get("onnx_metadata", {}).items()})
    else:
        meta = read_metadata(path)
        if not meta:
            raise ExportError(f"{path!r} holds no metadata (it was not written by maedet-export).")
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


def _trt_outputs(args: argparse.Namespace, onnx_path: Path, result: Any, say: Any) -> dict[str, Any]:
    """Build the engine (and check it against ONNX Runtime when a GPU is present)."""
    from . import tensorrt as trt_mod

    meta = result.metadata
    profile = trt_mod.profile_shapes(
        batch=args.batch,
        input_size=args.input_size,
        dynamic=args.dynamic,
        in_chans=int(meta["input_size"][0]),
        min_batch=args.min_batch,
        max_batch=args.max_batch,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    info = trt_mod.build_engine(
        onnx_path,
        args.trt,
        precision=result.precision,
        profile=profile,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        metadata=meta,
        log=say,
    )
    if args.check:
        engine = trt_mod.load_engine(args.trt)
        h, w = meta["input_size"][1:]
        images = synthetic_images(args.batch, h, w, meta["mean"], meta["std"], seed=77)
        got = trt_mod.run_engine(engine, images)
        ref = run_onnx(onnx_session(onnx_path), images)
        info["check"] = compare_outputs(
            ref,
            got,
            result.precision,
            input_shape=images.shape,
            providers=["TensorRT"],
            tolerance=ENGINE_TOLERANCES[result.precision],
        ).to_dict()
    return info


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.model is None:
        parser.error("give a MODEL to export, or --info FILE")
    if not args.onnx and not args.trt:
        raise ExportError("say where to write: --onnx OUT.onnx and/or --trt OUT.engine.")
    if args.io_half and not args.half:
        raise ExportError("--io-half needs --half.")
    if (args.calib or args.calib_batches != 8 or args.int8_mode != "portable") and not args.int8:
        raise ExportError("--calib, --calib-batches and --int8-mode need --int8.")
    if args.trt and args.int8 and args.int8_mode == "cpu":
        raise ExportError("--int8-mode cpu writes uint8 asymmetric Q/DQ, which TensorRT cannot load; use the default.")
    if args.trt:
        from .tensorrt import profile_shapes, validate_workspace

        validate_workspace(args.workspace)  # fail before the (slow) ONNX export, not after
        profile_shapes(
            batch=args.batch,
            input_size=args.input_size,
            dynamic=args.dynamic,
            min_batch=args.min_batch,
            max_batch=args.max_batch,
            min_size=args.min_size,
            max_size=args.max_size,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.info:
            return _info(args.info, args.json, console)
        _validate(args, parser)
        return _export(args, console)
    except ExportError as exc:  # MissingDependencyError included: both are one sentence and exit code 2
        console.print(Text("error: ", style="red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[red]interrupted:[/red] no output file was written or replaced.", highlight=False)
        return 130


def _export(args: argparse.Namespace, console: Console) -> int:
    from .onnx_export import export_onnx

    onnx_path = Path(args.onnx) if args.onnx else Path(args.trt).with_suffix(".onnx")
    precision = "fp16" if args.half else "int8" if args.int8 else "fp32"
    with console.status("exporting") as status:

        def say(msg: str) -> None:
            console.log(msg, highlight=False, markup=False)
            status.update(msg)

        result = export_onnx(
            args.model,
            onnx_path,
            structure=args.structure,
            checkpoint=args.checkpoint,
            input_size=tuple(args.input_size),
            batch=args.batch,
            outputs=args.outputs,
            out_indices=args.out_indices,
            num_classes=args.num_classes,
            dynamic=args.dynamic,
            opset=args.opset,
            precision=precision,
            io_half=args.io_half,
            calib=args.calib,
            calib_batches=args.calib_batches,
            int8_mode=args.int8_mode,
            simplify=args.simplify,
            check=args.check,
            log=say,
        )
    size_mb = onnx_path.stat().st_size / 1e6
    console.print(f"wrote {onnx_path} ({size_mb:.1f} MB, {precision}, outputs {', '.join(result.output_names)})")
    for note in result.warnings:
        if not note.startswith("WARNING"):  # the synthetic-calibration warning was already printed
            console.print(note, highlight=False, markup=False)
    summary: dict[str, Any] = {
        "onnx": str(onnx_path),
        "precision": precision,
        "output_names": result.output_names,
        "check": result.check.to_dict() if result.check else None,
    }
    code = 0
    if result.check is not None:
        console.print(_check_table(result.check, "ONNX Runtime CPU vs PyTorch fp32"))
        if not result.check.passed:
            console.print(f"[red]check failed:[/red] outside the {precision} tolerance ({result.check.tolerance}).")
            code = 1
    if args.trt:
        with console.status("building TensorRT engine") as status:
            info = _trt_outputs(args, onnx_path, result, lambda m: (console.log(m, markup=False), status.update(m)))
        console.print(
            f"wrote {args.trt} and {args.trt}.json (TensorRT {info['tensorrt_version']}, {info['gpu_name']})",
            markup=False,
        )
        summary["engine"] = {k: v for k, v in info.items() if k != "onnx_metadata"}
        if "check" in info:
            passed = info["check"]["passed"]
            console.print(
                f"TensorRT vs ONNX Runtime: {'passed' if passed else 'FAILED'} ({info['check']['tolerance']})"
            )
            for name, o in info["check"]["outputs"].items():
                console.print(
                    f"  {name}: max abs {o['max_abs']:.3e}  max rel {o['max_rel']:.3e}  cos {o['cosine']:.6f}"
                )
            code = code or (0 if passed else 1)
    if args.json:
        print(json.dumps(summary, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
