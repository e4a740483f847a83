"""``maedet-detect`` and ``maedet-eval``: thin command lines over :mod:`maedet.detect`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from maedet.cli import deprecated_alias, make_parser, positive_int, progress_bar, run_cli
from maedet.devices import device_argument
from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text, refuse_overwriting_inputs
from maedet.images import image_size
from maedet.letterbox import SIZE_DIVISOR
from maedet.sizes import OneSizeAction
from maedet.zoo.checkpoint import preview

from .backends import Backend, load_backend
from .coco import category_ids, class_names
from .evaluate import STAT_NAMES, evaluate, load_annotations
from .output import check_out_dir, write_outputs
from .run import ImageResult, detect_images

__all__ = ["build_detect_parser", "build_eval_parser", "detect_main", "eval_main"]

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="detector name: maedet_s_gfl, maedet_m_gfl, maedet_l_gfl, resnet50_gfl, ...")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--checkpoint", metavar="FILE", help="weights: the authors' latest.pth, ours, or a maedet-convert folder"
    )
    src.add_argument("--pretrained", action="store_true", help="download the authors' COCO weights")
    src.add_argument("--onnx", metavar="FILE", help="an exported detector (maedet-export NAME --onnx FILE)")
    src.add_argument(
        "--openvino", metavar="DIR", help="an exported detector's OpenVINO IR (maedet-export NAME --openvino DIR)"
    )
    p.add_argument("--num-classes", type=int, help="classes of --model (default 80, or the converted folder's)")
    p.add_argument(
        "--test-scale",
        nargs="+",
        action=OneSizeAction,
        limits=(SIZE_DIVISOR, None),  # one stride-32 cell at least; memory decides the top
        default=None,
        metavar="SIZE",
        help="test scale, the limits of the long and short side: LONG SHORT, LONGxSHORT or one number for both "
        "(as --input-size reads sizes; default: an exported file's own input size, else 1333x800, the authors')",
    )
    deprecated_alias(p, "--size", "--test-scale")
    p.add_argument("--batch-size", type=int, default=1, help="images per run")
    deprecated_alias(p, "--batch", "--batch-size")
    p.add_argument("--device", type=device_argument, default="cpu", help="PyTorch device for --model: cpu, cuda[:N]")


def _backend(args: argparse.Namespace) -> Backend:
    if (args.onnx or args.openvino) and args.model:
        flag = "--onnx" if args.onnx else "--openvino"
        raise MaeDetError(f"give --model (PyTorch) or {flag} (an exported file), not both.")
    return load_backend(
        args.model,
        args.checkpoint,
        args.onnx,
        openvino=args.openvino,
        num_classes=args.num_classes,
        device=args.device,
        pretrained=args.pretrained,
    )


def _folder_images(item: str) -> list[Path]:
    """The images of a folder (by suffix); the other files are named in a warning, never skipped without a word."""
    entries = sorted(Path(item).iterdir())
    found = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not found:
        raise MaeDetError(f"folder {item!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    skipped = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in found]  # subfolders are not read
    if skipped:
        logger.warning(
            "skipped %d %s of %s that %s (%s): %s.",
            len(skipped),
            "entry" if len(skipped) == 1 else "entries",
            item,
            "is not an image file" if len(skipped) == 1 else "are not image files",
            ", ".join(IMAGE_SUFFIXES),
            preview(skipped),
        )
    return found


def _expand(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += _folder_images(item)
        elif path.is_file():
            files.append(path)
        else:
            raise MaeDetError(f"image {item!r} does not exist.")
    return files


def _summary(results: Sequence[ImageResult], names: Sequence[str]) -> Table:
    table = Table(title="detections")
    for col in ("image", "size", "detections", "best"):
        table.add_column(col, justify="right" if col == "detections" else "left")
    for res in results:
        det = res.detections
        best = f"{names[int(det.labels[0])]} {float(det.scores[0]):.2f}" if len(det) else "-"
        table.add_row(res.path.name, f"{res.width}×{res.height}", str(len(det)), best)
    return table


def _weight_inputs(args: argparse.Namespace) -> dict[str, str | None]:
    return {"--checkpoint": args.checkpoint, "--onnx file": args.onnx, "--openvino folder": args.openvino}


def _detect(args: argparse.Namespace) -> int:
    inputs = {**_weight_inputs(args), **{f"image {item}": item for item in args.images}}
    refuse_overwriting_inputs(inputs, output_folders={"--out folder": args.out})
    files = _expand(args.images)
    for path in files:  # headers only: a missing, damaged or oversized image is refused before any model loads
        image_size(path)
    check_out_dir(args.out)
    backend = _backend(args)
    names, cat_ids = class_names(backend.num_classes), category_ids(backend.num_classes)
    with progress_bar() as progress:
        task = progress.add_task(f"detecting ({backend.name})", total=len(files))
        results = detect_images(
            files,
            backend,
            scale=args.test_scale,
            batch_size=args.batch_size,
            on_batch=lambda n: progress.advance(task, n),
        )
    path = write_outputs(results, args.out, names, cat_ids, draw=not args.no_draw)
    Console(stderr=True).print(_summary(results, names))
    print(path)
    return 0


def build_detect_parser() -> argparse.ArgumentParser:
    p = make_parser("maedet-detect", "Detect objects in images with a GFocalV2 detector (PyTorch or ONNX).")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    _add_backend_args(p)
    p.add_argument("--out", required=True, help="new or empty folder: annotated images + detections.json (COCO)")
    p.add_argument("--no-draw", action="store_true", help="write detections.json only")
    return p


def detect_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_detect_parser(), _detect, argv)


# pycocotools writes -1 for a figure with nothing to average: no ground-truth box of that size in the images.
NOT_AVAILABLE = "no ground-truth boxes of this size in the images evaluated"


def _percent(stats: dict[str, float]) -> dict[str, float | None]:
    """The figures in percent (as papers and the table give COCO AP), None where pycocotools has none (-1)."""
    return {name: round(100.0 * value, 4) if value >= 0 else None for name, value in stats.items()}


def _eval_table(percent: dict[str, float | None], title: str) -> Table:
    table = Table(title=title, caption=f"n/a: {NOT_AVAILABLE}" if None in percent.values() else None)
    for name in STAT_NAMES[:6]:
        table.add_column(name, justify="right")
    table.add_row(*(f"{percent[n]:.1f}" if percent[n] is not None else "n/a" for n in STAT_NAMES[:6]))
    return table


def _eval(args: argparse.Namespace) -> int:
    inputs = {**_weight_inputs(args), "--ann file": args.ann, "--images folder": args.images}
    refuse_overwriting_inputs(inputs, {"--json output": args.json})
    coco = load_annotations(args.ann)  # a bad file is refused before the model is built
    backend = _backend(args)
    with progress_bar() as progress:
        task = progress.add_task(f"evaluating ({backend.name})", total=None)
        result = evaluate(
            backend,
            coco,
            args.images,
            scale=args.test_scale,
            batch_size=args.batch_size,
            limit=args.limit,
            on_start=lambda n: progress.update(task, total=n),
            on_batch=lambda n: progress.advance(task, n),
        )
    title = f"{backend.name}: COCO box AP (%) on {result.images} images, {result.detections} detections"
    percent = _percent(result.stats)
    Console(stderr=True).print(_eval_table(percent, title))
    summary = {"model": backend.name, "images": result.images, "detections": result.detections, "unit": "percent"}
    summary |= percent
    missing = [name for name, value in percent.items() if value is None]
    if missing:
        summary["not_available"] = {name: NOT_AVAILABLE for name in missing}
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=1) + "\n", "JSON output")
    print(json.dumps(summary))
    return 0


def eval_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_eval_parser(), _eval, argv)


def build_eval_parser() -> argparse.ArgumentParser:
    p = make_parser("maedet-eval", "COCO box AP of a GFocalV2 detector (PyTorch or ONNX) with pycocotools.")
    p.add_argument("--ann", required=True, help="COCO annotations (instances_val2017.json)")
    p.add_argument("--images", required=True, help="folder with the annotated images")
    _add_backend_args(p)
    p.add_argument("--limit", type=positive_int, help="only the first N images (by id)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this file")
    return p


if __name__ == "__main__":
    sys.exit(detect_main())
