"""``maedet-bench --detector DETECTOR --data val.json --images DIR``: AP per format beside latency, a CI gate.

A thin layer over :func:`maedet.bench.accuracy.measure_formats`: the flags, the one-sentence refusals, the table
and the outputs. ``--max-ap-drop P`` exits 1, after writing every output, naming the formats that lose more than
P AP points against PyTorch fp32.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .accuracy_formats import FORMATS
from .errors import BenchError
from .pseudo_labels import PSEUDO_LABEL_THRESHOLD

__all__ = ["ACCURACY_FLAGS", "add_accuracy_options", "is_accuracy_run", "run_accuracy"]

# The flags that belong to the AP-per-format run (a DETECTOR value), by destination.
ACCURACY_FLAGS = {
    "data": "--data",
    "images": "--images",
    "checkpoint": "--checkpoint",
    "pseudo_labels": "--pseudo-labels",
    "score_threshold": "--score-threshold",
    "max_ap_drop": "--max-ap-drop",
    "calib": "--calib",
    "formats": "--formats",
}
# The zoo run's flags, which say nothing in an AP-per-format run.
_ZOO_FLAGS = {
    "models": "--models",
    "structure": "--structure",
    "backends": "--backends",
    "channels_last": "--channels-last",
    "compile": "--compile",
    "int8": "--int8",
    "paper": "--paper",
}


def add_accuracy_options(p: argparse.ArgumentParser) -> None:
    """The flags of ``--detector DETECTOR`` (see docs/cli.md)."""
    g = p.add_argument_group("AP per format (with --detector DETECTOR)")
    g.add_argument("--data", metavar="FILE", help="COCO annotations of the images (val.json)")
    g.add_argument("--images", metavar="DIR", help="the folder of the images to score on")
    g.add_argument("--checkpoint", metavar="FILE", help="weights of a DETECTOR given by name (as maedet-eval)")
    g.add_argument(
        "--pseudo-labels",
        action="store_true",
        help="no annotations: PyTorch fp32's own detections (score >= --score-threshold) are the ground truth, and "
        "the table reports agreement with PyTorch fp32, not accuracy",
    )
    g.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        metavar="S",
        help=f"with --pseudo-labels: the score a detection needs to become a label (default {PSEUDO_LABEL_THRESHOLD})",
    )
    g.add_argument(
        "--max-ap-drop",
        type=float,
        default=None,
        metavar="P",
        help="exit 1 (after writing the outputs) naming the formats that lose more than P AP points against "
        "PyTorch fp32: a gate for CI",
    )
    g.add_argument("--calib", metavar="DIR", help="INT8 calibration images (default: the --images folder)")
    g.add_argument("--formats", metavar="LIST", help=f"comma list of formats (default all): {', '.join(FORMATS)}")


def is_accuracy_run(args: argparse.Namespace) -> bool:
    """True for ``--detector DETECTOR``; refuses, in one sentence, AP flags without a DETECTOR and the reverse."""
    given = [flag for dest, flag in ACCURACY_FLAGS.items() if getattr(args, dest) not in (None, False)]
    if not isinstance(args.detector, str):
        if given:
            raise BenchError(
                f"{', '.join(given)} measure AP per format and need the detector to measure: --detector DETECTOR "
                "(a trained detector folder, or a detector name with --checkpoint)."
            )
        return False
    if args.images is None:
        raise BenchError(
            f"--detector {args.detector} measures AP per format on your data: give --data val.json --images DIR, "
            "or --images DIR --pseudo-labels."
        )
    zoo = [flag for dest, flag in _ZOO_FLAGS.items() if getattr(args, dest) not in (None, False, [])]
    if zoo or args.batch_size != [1] or (args.input_size and len(args.input_size) > 1):
        what = ", ".join(zoo) or ("--batch-size" if args.batch_size != [1] else "several --input-size")
        raise BenchError(
            f"{what} belong to the zoo bench; --detector DETECTOR measures one detector at one input size, batch 1."
        )
    if args.score_threshold is not None and not args.pseudo_labels:
        raise BenchError("--score-threshold sets the pseudo-labels' threshold; it goes with --pseudo-labels.")
    return True


def _outputs(args: argparse.Namespace) -> dict[str, Any]:
    from maedet.fileio import refuse_overwriting_inputs

    from .outputs import check_outputs

    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise BenchError(f"the plot is written as PNG, so its name must end in .png (got {args.plot!r}).")
    inputs = {"--detector": args.detector, "--data": args.data, "--images": args.images, "--calib": args.calib,
              "--checkpoint": args.checkpoint, "--cache-dir": args.cache_dir}  # fmt: skip
    refuse_overwriting_inputs(inputs, {"JSON output": args.json, "CSV output": args.csv, "plot": args.plot})
    return check_outputs({"JSON": args.json, "CSV": args.csv, "plot": args.plot})


def _gate(report: Any, max_drop: float | None) -> int:
    """0, or 1 with one line naming the formats that lose more than ``max_drop`` AP points."""
    if max_drop is None:
        return 0
    over = report.over_budget(max_drop)
    if not over:
        return 0
    unit = "AP points" if report.metric == "accuracy" else "agreement AP points"
    names = ", ".join(f"{r.format} ({r.ap_drop:.2f})" for r in over)
    count = f"{len(over)} format{'s' if len(over) > 1 else ''} lose{'s' if len(over) == 1 else ''}"
    sys.stderr.write(f"maedet-bench: {count} more than {max_drop:g} {unit} against PyTorch fp32: {names}.\n")
    return 1


def run_accuracy(args: argparse.Namespace, settings: Any) -> int:
    """Measure, print the table, write the outputs, then apply the gate."""
    import math

    from rich.console import Console

    from .accuracy import measure_formats
    from .accuracy_report import render_table, write_report

    if args.max_ap_drop is not None and not math.isfinite(args.max_ap_drop):
        raise BenchError(f"--max-ap-drop must be a finite number of AP points, got {args.max_ap_drop}.")
    outputs = _outputs(args)
    report = measure_formats(
        args.detector,
        images=args.images,
        data=args.data,
        checkpoint=args.checkpoint,
        input_size=args.input_size[0] if args.input_size else (640, 640),
        formats=args.formats,
        pseudo_labels=args.pseudo_labels,
        score_threshold=args.score_threshold if args.score_threshold is not None else PSEUDO_LABEL_THRESHOLD,
        calib=args.calib,
        settings=settings,
    )
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(render_table(report))
    for what, path in write_report(report, outputs).items():
        console.print(f"{what}: {path}")
    console.print(f"done in {report.elapsed_s:.0f} s")
    return _gate(report, args.max_ap_drop)
