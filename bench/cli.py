"""``maedet-bench``: MAE-DET-S/M/L against ResNet-50/101 as C2..C5 backbones, on every backend available here."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .backends import detect_backends, resolve_backends
from .errors import BenchError
from .models import DEFAULT_MODELS

__all__ = ["build_parser", "main"]

QUICK = dict(input_size=[(256, 256)], backends="torch-eager", warmup=1, rounds=4, min_rounds=2, max_time=30.0)


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x×,]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"input size must look like 640 or 480x640, not {text!r}")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maedet-bench",
        description="Measure MAE-DET-S/M/L against ResNet-50/101 (C2..C5 backbones, same input) on the backends "
        "this machine has; ratios against the ResNets are the headline, absolute times carry the machine line.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help="timm names or structure files (JSON or authors' txt); default: %(default)s",
    )
    p.add_argument(
        "--structure",
        action="append",
        default=[],
        metavar="FILE",
        help="add a searched structure file as a model (repeatable)",
    )
    p.add_argument(
        "--backends",
        default=None,
        help="comma list of backends or aliases cpu, cpu-all, gpu, all (default: torch-eager, ort-cpu and, "
        "where available, the GPU set); see --list-backends",
    )
    p.add_argument("--channels-last", action="store_true", help="also measure PyTorch eager in channels-last")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow first compile)")
    p.add_argument("--int8", action="store_true", help="also measure ONNX Runtime CPU INT8 (Q/DQ, static)")
    p.add_argument(
        "--input-size",
        nargs="+",
        type=_size,
        default=None,
        metavar="HxW",
        help="one or more input sizes, e.g. 640 or 480x640 (default 640x640)",
    )
    p.add_argument("--batch-size", nargs="+", type=int, default=[1], metavar="N", help="one or more batch sizes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: usable cores)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per model and backend (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="most interleaved timing rounds (default 12)")
    p.add_argument("--min-rounds", type=int, default=None, help="rounds done even past the time budget (default 3)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per model per round (default: auto)")
    p.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="seconds for the whole run; no new round starts that would end later (default 210, 0: none)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a one-minute check: PyTorch eager at 256x256, few rounds (explicit flags still win)",
    )
    p.add_argument("--cache-dir", default=None, help="where exported ONNX files and engines are kept")
    p.add_argument("--paper", action="store_true", help="add published COCO AP / GFLOPs (labelled published)")
    p.add_argument("--json", default=None, metavar="FILE", help="write all results as one JSON object")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one CSV line per result row")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write latency-vs-GMACs and speedup plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-backends", action="store_true", help="show which backends can run here, and exit")
    return p


def _list_backends() -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="maedet-bench backends on this machine", title_justify="left")
    for col in ("backend", "device", "precision", "what", "status"):
        table.add_column(col)
    for status in detect_backends():
        b = status.backend
        table.add_row(
            b.name,
            b.device,
            b.precision,
            b.description,
            "[green]available[/]" if status.available else f"[yellow]skipped:[/] {escape(status.reason or '')}",
        )
    Console().print(table)
    return 0


def _backend_spec(args: argparse.Namespace) -> str | None:
    spec = args.backends if args.backends is not None else (QUICK["backends"] if args.quick else None)
    extra = [
        name
        for flag, name in (
            (args.channels_last, "torch-eager-cl"),
            (args.compile, "torch-compile"),
            (args.int8, "ort-cpu-int8"),
        )
        if flag
    ]
    if not extra:
        return spec
    return ",".join([*resolve_backends(spec), *extra])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_backends:
        return _list_backends()
    from rich.console import Console

    from .report import render_table, write_csv, write_json, write_plot
    from .runner import run_bench

    quick = args.quick
    try:
        if args.plot is not None and not args.plot.lower().endswith(".png"):
            raise BenchError(f"the plot is written as PNG, so its name must end in .png (got {args.plot!r}).")
        result = run_bench(
            models=[*_names(args.models), *args.structure],
            backends=_backend_spec(args),
            input_sizes=args.input_size or (QUICK["input_size"] if quick else [(640, 640)]),
            batch_sizes=args.batch_size,
            threads=args.threads,
            warmup=args.warmup if args.warmup is not None else (QUICK["warmup"] if quick else 2),
            rounds=args.rounds if args.rounds is not None else (QUICK["rounds"] if quick else 12),
            min_rounds=args.min_rounds if args.min_rounds is not None else (QUICK["min_rounds"] if quick else 3),
            iterations=args.iters,
            max_time_s=(args.max_time if args.max_time is not None else (QUICK["max_time"] if quick else 210.0))
            or None,
            cache_dir=args.cache_dir,
            paper=args.paper,
            progress=not args.no_progress,
        )
        console = Console()
        if not console.is_terminal:
            console.width = max(console.width, 160)  # files and pipes get the whole table, not 80 columns
        console.print(render_table(result))
        for flag, writer, what in (
            (args.json, write_json, "JSON"),
            (args.csv, write_csv, "CSV"),
            (args.plot, write_plot, "plot"),
        ):
            if flag:
                console.print(f"{what}: {writer(result, flag)}")
        console.print(f"done in {result.elapsed_s:.0f} s")
    except BenchError as exc:
        print(f"maedet-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maedet-bench: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
