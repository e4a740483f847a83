"""``maedet-search``: run the zero-shot search, or score a structure file. A thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from maedet.zoo import load_structure

from .budget import PRESETS, Budget, preset_budget
from .evolution import CHECKPOINT_NAME, ForwardOptions, Search, SearchError, SearchSettings
from .executors import make_executor
from .report import describe, write_outputs
from .score import DEFAULT_RATIOS

__all__ = ["main"]


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must be non-negative numbers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maedet-search", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="search for the highest-scoring backbone within a budget")
    run.add_argument("--preset", choices=sorted(PRESETS), help="budget of a published MAE-DET structure")
    run.add_argument("--init", default="r50_like_init", help="initial structure: file or built-in name")
    run.add_argument("--budget-flops", type=float, help="official FLOPs at --resolution (e.g. 188e8)")
    run.add_argument("--budget-params", type=float, help="parameters")
    run.add_argument("--budget-layers", type=int, help="conv layers (1 per stem + 3 per block)")
    run.add_argument("--budget-gmacs", type=float, help="GMACs at 224 px")
    run.add_argument("--resolution", type=int, default=480, help="resolution of the FLOPs budget (default 480)")
    run.add_argument("--ratios", type=_ratios, default=DEFAULT_RATIOS, help="level ratios stem,C2..C5 (0,0,1,1,6)")
    run.add_argument("--population", type=int, default=256)
    run.add_argument("--iterations", type=int, default=100_000, help="candidates to evaluate")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--score", choices=("closed-form", "forward"), default="closed-form")
    run.add_argument("--forward-batch", type=int, default=8)
    run.add_argument("--forward-resolution", type=int, default=224)
    run.add_argument("--forward-repeats", type=int, default=4)
    run.add_argument("--device", default="cpu", help="forward score device (cpu or cuda)")
    run.add_argument("--workers", type=int, default=1, help="local processes that score candidates")
    run.add_argument("--executor", choices=("local", "ray"), default="local")
    run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--batch", type=int, default=32, help="candidates proposed per step (part of the result)")
    run.add_argument("--mutations", type=int, default=2, help="a child gets 1..N mutations")
    run.add_argument("--checkpoint-every", type=int, default=5000)
    run.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.json")
    run.add_argument("--top-k", type=int, default=32, help="members written to population.json")
    run.add_argument("--quiet", action="store_true", help="no progress bar or table")
    run.add_argument("--out", required=True, help="output folder")

    score = sub.add_parser("score", help="score and cost figures of a structure file (ours or the authors')")
    score.add_argument("file")
    score.add_argument("--json", action="store_true", help="print one JSON object")
    score.add_argument("--resolution", type=int, default=480, help="resolution of the FLOPs figure (default 480)")
    score.add_argument("--ratios", type=_ratios, default=DEFAULT_RATIOS)
    return parser


def _settings(args: argparse.Namespace) -> SearchSettings:
    init = load_structure(args.init)
    base = preset_budget(args.preset, args.resolution) if args.preset else Budget(resolution=args.resolution)
    limits = {
        "flops": int(args.budget_flops) if args.budget_flops is not None else base.flops,
        "params": int(args.budget_params) if args.budget_params is not None else base.params,
        "layers": args.budget_layers if args.budget_layers is not None else base.layers,
        "gmacs": args.budget_gmacs if args.budget_gmacs is not None else base.gmacs,
    }
    if all(v is None for v in limits.values()):
        raise SearchError("give a --preset or at least one --budget-* limit.")
    budget = Budget(**limits, resolution=args.resolution)
    forward = ForwardOptions(args.forward_batch, args.forward_resolution, args.forward_repeats, args.seed, args.device)
    return SearchSettings(
        init=init,
        budget=budget,
        ratios=tuple(args.ratios),
        population=args.population,
        iterations=args.iterations,
        seed=args.seed,
        score=args.score,
        forward=forward,
        batch=args.batch,
        mutations=args.mutations,
        checkpoint_every=args.checkpoint_every,
    )


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    settings = _settings(args)
    out = Path(args.out)
    search = Search.resume(settings, out / CHECKPOINT_NAME) if args.resume else Search(settings)
    out.mkdir(parents=True, exist_ok=True)

    interrupted = {"count": 0}

    def on_sigint(signum, frame):  # first Ctrl-C: stop at the next batch; second: stop now
        interrupted["count"] += 1
        if interrupted["count"] > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    console = Console(stderr=True)
    executor = make_executor(args.executor, args.workers, args.ray_address)
    try:
        with Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]:.3f}"),
            TimeElapsedColumn(),
            console=console,
            disable=args.quiet,
        ) as bar:
            task = bar.add_task("search", total=settings.iterations, completed=search.candidates, best=search.best[0])
            search.run(
                executor,
                stop=lambda: interrupted["count"] > 0,
                progress=lambda s: bar.update(task, completed=s.candidates, best=s.best[0]),
                checkpoint_dir=out,
            )
    except KeyboardInterrupt:
        print(f"interrupted; the last checkpoint in {out} can be resumed with --resume.", file=sys.stderr)
        return 130
    finally:
        executor.close()
        signal.signal(signal.SIGINT, previous)
    best = write_outputs(search, out, top_k=args.top_k)
    if interrupted["count"]:
        print(f"stopped after {search.candidates:,} candidates; continue with --resume.", file=sys.stderr)
        return 130
    if not args.quiet:
        _table(console, best, out)
    return 0


def _table(console, best: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"maedet-search: best structure ({out / 'best.json'})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("score", f"{best['score']:.6f}")
    for name, value in best["stage_scores"].items():
        table.add_row(f"  level {name}", f"{value:.6f}")
    table.add_row(f"official FLOPs @{best['budget']['resolution']}", f"{best['flops']:,}")
    table.add_row("GMACs @224", f"{best['gmacs']:.3f} GMACs")
    table.add_row("params", f"{best['params']:,}")
    table.add_row("conv layers", str(best["layers"]))
    table.add_row("candidates", f"{best['candidates']:,}")
    table.add_row("wall time", f"{best['wall_s']:.1f} s")
    console.print(table)


def _score(args: argparse.Namespace) -> int:
    structure = load_structure(args.file)
    info = describe(structure, args.resolution, tuple(args.ratios))
    if args.json:
        print(json.dumps(info))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"score of {args.file}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in info["stage_scores"].items():
        table.add_row(f"level {name}", f"{value:.6f}")
    table.add_row("score (ratios " + ",".join(f"{r:g}" for r in args.ratios) + ")", f"{info['score']:.6f}")
    table.add_row(f"official FLOPs @{args.resolution}", f"{info['flops']:,}")
    table.add_row("GMACs @224", f"{info['gmacs']:.3f} GMACs")
    table.add_row("params", f"{info['params']:,}")
    table.add_row("conv layers", str(info["layers"]))
    Console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _score(args)
    except (ValueError, RuntimeError) as exc:  # SearchError and the zoo's validation errors are ValueErrors
        message = str(exc).rstrip(".")
        print(f"maedet-search: error: {message}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
