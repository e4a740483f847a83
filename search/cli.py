"""``maedet-search``: run the zero-shot search, or score a structure file. A thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from maedet.cli import (
    HelpFormatter,
    Terminated,
    add_subparsers,
    deprecated_alias,
    make_parser,
    positive_int,
    run_cli,
)
from maedet.devices import device_argument
from maedet.sizes import OneSizeAction
from maedet.zoo import load_structure

from .budget import PRESETS, Budget, preset_budget
from .errors import SearchError
from .eta import SearchEta, eta_column, log_forward_eta
from .evolution import CHECKPOINT_NAME, ForwardOptions, Search, SearchSettings
from .executors import executor_parallelism, make_executor
from .latency import LatencyTarget, open_latency_target, parse_latency_budget
from .memory_budget import MemoryModel, memory_model_of, table_memory_figures
from .output_folder import check_output_folder, locked_output_folder
from .pareto import PARETO_NAMES, ParetoSettings, resolve_layers, run_pareto, write_pareto
from .report import OUTPUT_NAMES, describe, write_outputs
from .score import DEFAULT_RATIOS

__all__ = ["main"]

PROG = "maedet-search"
LOGGER = logging.getLogger("maedet.search")
DESCRIPTION = (
    "Zero-shot maximum-entropy search for MAE-DET detection backbones ('run'), the score, cost and predicted "
    "latency of a structure file ('score'), and the front of score against predicted latency ('pareto')."
)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"ratios must be finite non-negative numbers, got {text!r}")
    return values


def _seconds(text: str) -> float:
    value = _limit(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a budget must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a budget must be a finite number, got {text!r}")
    return value


RATIOS_TEXT = ",".join(f"{r:g}" for r in DEFAULT_RATIOS)  # argparse runs a string default through ``type``


def _subcommand(sub: argparse._SubParsersAction, name: str, usage: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand with defaults in its --help and its own -v/-q (which never reset the ones given before it).

    Its prog is the tool's name, so usage errors read ``maedet-search: error: …`` like every other error.
    """
    parser = sub.add_parser(
        name,
        prog=PROG,
        usage=f"%(prog)s {name} {usage}",
        help=summary,
        description=summary,
        formatter_class=HelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    group.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help="no progress bar or table")
    return parser


def _add_budget_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--preset", choices=sorted(PRESETS), help="limit FLOPs and layers to a published structure's")
    run.add_argument("--budget-flops", type=_limit, metavar="FLOPS", help="official FLOPs at --resolution (e.g. 188e8)")
    run.add_argument("--budget-params", type=_limit, metavar="PARAMS", help="parameters")
    run.add_argument("--budget-layers", type=int, metavar="LAYERS", help="conv layers (1 per stem + 3 per block)")
    run.add_argument("--budget-gmacs", type=_limit, metavar="GMACS", help="GMACs at 224 px")
    _add_square_size(run, "--resolution", 480, "input size of the FLOPs budget")


def _add_square_size(parser: argparse.ArgumentParser, flag: str, default: int | None, what: str) -> None:
    """A square input size in the grammar of every size flag (640, 640x640 or 640 640), stored as its side."""
    help_text = f"{what}: one square size, 640, 640x640 or 640 640"
    parser.add_argument(
        flag, nargs="+", action=OneSizeAction, square=True, default=default, metavar="SIZE", help=help_text
    )


def _add_latency_table_options(
    parser: argparse.ArgumentParser, old_batch_flag: bool = False, repeatable: bool = False
) -> None:
    what = "a profiled table file (maedet-bench profile) or v100-fp32, v100-fp16, v100-int8"
    parser.add_argument(
        "--latency-table",
        metavar="FILE_OR_NAME",
        action="append" if repeatable else "store",
        help=f"latency table: {what}"
        + ("; repeat it for one front per target, each priced on the others" if repeatable else ""),
    )
    parser.add_argument("--latency-batch", type=positive_int, metavar="N", help="batch of a V100 table")
    if old_batch_flag:
        deprecated_alias(parser, "--batch", "--latency-batch")
    _add_square_size(parser, "--input-size", None, "input size of a V100 table")


def _add_latency_budget_options(run: argparse.ArgumentParser) -> None:
    _add_latency_table_options(run)
    limit = run.add_mutually_exclusive_group()
    limit.add_argument(
        "--budget-latency",
        metavar="MS",
        help="predicted ms per batch of the table's target, or relative to a reference it stores (1.0xresnet50)",
    )
    limit.add_argument("--budget-latency-per-image", type=_limit, metavar="MS", help="predicted ms per image")
    run.add_argument(
        "--detector-budget",
        action="store_true",
        help="the latency and memory budgets are the whole detector's (backbone + FPN + GFocalV2 head + NMS), as a "
        "table profiled with maedet-bench profile --detector (and --memory --detector) predicts them; relative "
        "budgets name its detectors (1.0xresnet50_gfl)",
    )
    _add_memory_budget_option(run)


def _add_memory_budget_option(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--budget-memory",
        type=_limit,
        metavar="MB",
        help="predicted peak memory in MiB on the --latency-table's target (its memory model: maedet-bench profile "
        "--memory; with --detector-budget the whole detector's: profile --memory --detector)",
    )


def _add_search_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--init", default="r50_like_init", metavar="FILE", help="initial structure (file or built-in)")
    run.add_argument("--ratios", type=_ratios, default=RATIOS_TEXT, help="level ratios stem,C2,C3,C4,C5")
    run.add_argument("--population", type=int, default=256, help="structures kept")
    run.add_argument("--iterations", type=int, default=100_000, help="candidates to evaluate")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    run.add_argument(
        "--candidates-per-step", type=positive_int, default=32, help="candidates proposed per step (part of the result)"
    )
    deprecated_alias(run, "--batch", "--candidates-per-step")
    run.add_argument("--mutations", type=int, default=2, help="a child gets 1..N mutations")
    run.add_argument("--score", choices=("closed-form", "forward"), default="closed-form", help="score method")
    run.add_argument("--forward-batch-size", type=positive_int, default=8, help="images per forward score")
    deprecated_alias(run, "--forward-batch", "--forward-batch-size")
    _add_square_size(run, "--forward-resolution", 224, "image size of the forward score")
    run.add_argument("--forward-repeats", type=int, default=4, help="draws averaged by the forward score")
    run.add_argument("--device", type=device_argument, default="cpu", help="forward score device (cpu or cuda[:N])")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--workers", type=positive_int, default=1, help="local processes (at most the CPU count)")
    run.add_argument("--executor", choices=("local", "ray"), default="local", help="where candidates are scored")
    run.add_argument("--ray-address", default=None, help="Ray cluster address (none: start a local Ray)")
    run.add_argument("--ray-timeout", type=_seconds, default=30.0, metavar="S", help="seconds to reach --ray-address")
    run.add_argument("--checkpoint-every", type=int, default=5000, help="candidates between checkpoints")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help=f"continue from OUT/{CHECKPOINT_NAME}")
    again.add_argument("--force", action="store_true", help="start over in an OUT that holds an earlier search")
    run.add_argument("--top-k", type=positive_int, default=32, help="members written to population.json")
    run.add_argument("--out", required=True, help="output folder")


def _add_pareto_parser(sub: argparse._SubParsersAction) -> None:
    summary = "sweep latency budgets and write the front of score against predicted latency"
    pareto = _subcommand(sub, "pareto", "--latency-table FILE_OR_NAME [options] --out OUT", summary)
    _add_latency_table_options(pareto, old_batch_flag=True, repeatable=True)
    pareto.add_argument("--points", type=positive_int, default=8, help="latency budgets swept (one search each)")
    pareto.add_argument("--iterations", type=positive_int, default=5000, help="candidates per search")
    pareto.add_argument("--seed", type=int, default=0, help="seed of every search")
    pareto.add_argument("--population", type=positive_int, default=256, help="structures kept per search")
    pareto.add_argument(
        "--budget-layers",
        type=int,
        metavar="LAYERS",
        help="conv layers limit of every search (default: MAE-DET-L's 109, the deepest marker the front is compared "
        "with)",
    )
    pareto.add_argument("--init", default="r50_like_init", metavar="FILE", help="initial structure")
    pareto.add_argument("--ratios", type=_ratios, default=RATIOS_TEXT, help="level ratios stem,C2,C3,C4,C5")
    pareto.add_argument(
        "--out",
        required=True,
        help="output folder (pareto.json, pareto.png; with several tables pareto-NAME.json/png per table, named by "
        "its file's stem, and targets.json/png: every front priced on every target)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, DESCRIPTION)
    sub = add_subparsers(parser)
    run = _subcommand(sub, "run", "[options] --out OUT", "search for the highest-scoring backbone within a budget")
    _add_budget_options(run)
    _add_latency_budget_options(run)
    _add_search_options(run)
    _add_run_options(run)
    score = _subcommand(sub, "score", "[options] FILE", "score and cost figures of a structure (ours or the authors')")
    score.add_argument("file", help="structure file (JSON or the authors' txt) or a built-in name")
    score.add_argument("--json", action="store_true", help="print one JSON object")
    _add_square_size(score, "--resolution", 480, "input size of the FLOPs figure")
    score.add_argument("--ratios", type=_ratios, default=RATIOS_TEXT, help="level ratios stem,C2,C3,C4,C5")
    _add_latency_table_options(score, old_batch_flag=True)
    _add_pareto_parser(sub)
    return parser


def _latency_target(args: argparse.Namespace, table: str | None = None) -> LatencyTarget | None:
    """The --latency-table predictor (or ``table``), or None; --latency-batch/--input-size only make sense with one."""
    table = table if table is not None else args.latency_table
    if table is None:
        if args.latency_batch is not None or args.input_size is not None:
            raise SearchError("a batch or input size for latency needs a --latency-table.")
        return None
    return open_latency_target(table, batch=args.latency_batch, input_size=args.input_size)


def _search_latency_target(args: argparse.Namespace) -> LatencyTarget | None:
    """The run's latency target: with --detector-budget, every prediction is the whole detector's."""
    target = _latency_target(args)
    if not args.detector_budget:
        return target
    if args.budget_latency is None and args.budget_latency_per_image is None:
        if args.budget_memory is None:
            raise SearchError(
                "--detector-budget goes with --budget-latency, --budget-latency-per-image or --budget-memory."
            )
        return target  # a memory budget alone: the detector's memory model (_memory_model), the table as it is
    if target is None:
        raise SearchError("a latency budget needs a --latency-table to predict with.")
    from .detector_latency import detector_target

    return detector_target(target, args.latency_table)


def _latency_limit(args: argparse.Namespace, target: LatencyTarget | None) -> float | None:
    if args.budget_latency is None and args.budget_latency_per_image is None:
        return None
    if target is None:
        raise SearchError("a latency budget needs a --latency-table to predict with.")
    if args.budget_latency is not None:
        return parse_latency_budget(args.budget_latency, target)
    return args.budget_latency_per_image * target.batch


def _budget(args: argparse.Namespace, target: LatencyTarget | None) -> Budget:
    base = preset_budget(args.preset, args.resolution) if args.preset else Budget(resolution=args.resolution)
    limits = {
        "flops": int(args.budget_flops) if args.budget_flops is not None else base.flops,
        "params": int(args.budget_params) if args.budget_params is not None else base.params,
        "layers": args.budget_layers if args.budget_layers is not None else base.layers,
        "gmacs": args.budget_gmacs if args.budget_gmacs is not None else base.gmacs,
        "latency_ms": _latency_limit(args, target),
        "memory_mib": args.budget_memory,
    }
    if all(v is None for v in limits.values()):
        raise SearchError("give a --preset or at least one --budget-* limit.")
    return Budget(**limits, resolution=args.resolution)


def _settings(args: argparse.Namespace) -> SearchSettings:
    forward = ForwardOptions(
        args.forward_batch_size, args.forward_resolution, args.forward_repeats, args.seed, args.device
    )
    target = _search_latency_target(args)
    return SearchSettings(
        init=load_structure(args.init),
        budget=_budget(args, target),
        ratios=tuple(args.ratios),
        population=args.population,
        iterations=args.iterations,
        seed=args.seed,
        score=args.score,
        forward=forward,
        batch=args.candidates_per_step,
        mutations=args.mutations,
        checkpoint_every=args.checkpoint_every,
        latency=target,
        memory=_memory_model(args, target),
    )


def _memory_model(args: argparse.Namespace, target: LatencyTarget | None) -> MemoryModel | None:
    """The table's memory model when a memory budget asks for one (with --detector-budget, its detectors')."""
    if args.budget_memory is None:
        return None
    return memory_model_of(target, f"the latency table {args.latency_table!r}", detector=args.detector_budget)


def _earlier_outputs(out: Path) -> list[Path]:
    """What an earlier search left in ``out`` (refused without --resume or --force)."""
    return [out / name for name in (CHECKPOINT_NAME, *OUTPUT_NAMES) if (out / name).exists()]


def _start(args: argparse.Namespace, out: Path) -> Search:
    """A new or resumed search; a new one never silently replaces an earlier search's files."""
    settings = _settings(args)
    if args.resume:
        return Search.resume(settings, out / CHECKPOINT_NAME)
    earlier = _earlier_outputs(out)
    if earlier and not args.force:
        raise SearchError(
            f"{str(out)!r} already holds a search ({earlier[0].name}); continue it with --resume, or pass --force "
            "to start over."
        )
    search = Search(settings)
    for path in earlier:
        path.unlink()
    return search


def _search_with_progress(search: Search, args: argparse.Namespace, out: Path, stop: Callable[[], bool]) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    executor = make_executor(args.executor, args.workers, args.ray_address, args.ray_timeout)
    best = TextColumn("best {task.fields[best]:.3f}")
    eta = SearchEta(search.settings.iterations)
    columns = (
        TextColumn("[bold]search"),
        BarColumn(),
        MofNCompleteColumn(),
        best,
        TimeElapsedColumn(),
        eta_column(eta),
    )

    def progress(s: Search) -> None:
        eta.update(s.candidates, s.wall_s)
        bar.update(task, completed=s.candidates, best=s.best[0])

    try:
        if search.settings.score == "forward":
            log_forward_eta(search, executor_parallelism(executor))
        with Progress(*columns, console=Console(stderr=True), disable=bool(args.quiet)) as bar:
            total = search.settings.iterations
            task = bar.add_task("search", total=total, completed=search.candidates, best=search.best[0])
            search.run(executor, stop=stop, progress=progress, checkpoint_dir=out)
    finally:
        executor.close()


def _say(message: str) -> None:
    """A line the user needs even with -q (how to continue after a stop): the CLI's own, not a log record."""
    sys.stderr.write(f"{PROG}: {message}\n")


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    names = (CHECKPOINT_NAME, *OUTPUT_NAMES)
    check_output_folder(out, names, {"--init structure": args.init, "--latency-table": args.latency_table})
    with locked_output_folder(out, names):
        return _run_locked(args, out)


def _run_locked(args: argparse.Namespace, out: Path) -> int:
    search = _start(args, out)
    interrupted = {"count": 0}

    def on_sigint(signum, frame):  # first Ctrl-C: stop at the next batch; second: stop now
        interrupted["count"] += 1
        if interrupted["count"] > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        _search_with_progress(search, args, out, stop=lambda: interrupted["count"] > 0)
    except KeyboardInterrupt as exc:  # a second Ctrl-C, or SIGTERM (the runner raises Terminated for it)
        _say(f"interrupted; the last checkpoint in {out} can be resumed with --resume.")
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGINT, previous)
    best = write_outputs(search, out, top_k=args.top_k)
    if interrupted["count"]:
        _say(f"stopped after {search.candidates:,} candidates; continue with --resume.")
        return 130
    if not args.quiet:
        _print_best(best, out)
    return 0


def _figures_table(title: str, rows: list[tuple[str, str]]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _cost_rows(info: dict, resolution: int) -> list[tuple[str, str]]:
    return [
        (f"official FLOPs @{resolution}", f"{info['flops']:,}"),
        ("GMACs @224", f"{info['gmacs']:.3f} GMACs"),
        ("params", f"{info['params']:,}"),
        ("conv layers", str(info["layers"])),
    ]


def _latency_rows(info: dict) -> list[tuple[str, str]]:
    if "latency_label" not in info:
        return []
    if info["latency_ms"] is None:
        return [(f"latency, {info['latency_label']}", "no prediction (outside the table)")]
    batch = info["latency_target"]["batch"]
    rows = [
        (f"latency, {info['latency_label']}", f"{info['latency_ms']:.4f} ms per batch of {batch}"),
        ("  per image", f"{info['latency_ms_per_image']:.4f} ms"),
    ]
    parts = info.get("detector_latency") or {}
    names = {"backbone_ms": "backbone", "neck_head_ms": "FPN + head", "postprocess_ms": "decode + NMS"}
    rows += [(f"  detector: {label}", f"{parts[key]:.4f} ms") for key, label in names.items() if key in parts]
    return rows + ([("  detector: total", f"{parts['total_ms']:.4f} ms")] if "total_ms" in parts else [])


def _memory_rows(info: dict) -> list[tuple[str, str]]:
    """The predicted peak memory: the backbone's and the whole detector's, whichever the figures hold."""
    rows = []
    if "memory_mib" in info:
        rows.append(("peak memory, predicted (ORT CPU)", f"{info['memory_mib']:.1f} MiB"))
    if "detector_memory_mib" in info:
        rows.append(("peak memory, whole detector (+ FPN, head, NMS)", f"{info['detector_memory_mib']:.1f} MiB"))
    return rows


def _print_best(best: dict, out: Path) -> None:
    from rich.console import Console

    rows = [("score", f"{best['score']:.6f}")]
    rows += [(f"  level {name}", f"{value:.6f}") for name, value in best["stage_scores"].items()]
    rows += _cost_rows(best, best["budget"]["resolution"]) + _latency_rows(best) + _memory_rows(best)
    rows += [("candidates", f"{best['candidates']:,}"), ("wall time", f"{best['wall_s']:.1f} s")]
    Console(stderr=True).print(_figures_table(f"{PROG}: best structure ({out / 'best.json'})", rows))


def _score(args: argparse.Namespace) -> int:
    structure, target = load_structure(args.file), _latency_target(args)
    info = describe(structure, args.resolution, tuple(args.ratios), target) | table_memory_figures(structure, target)
    if args.json:
        print(json.dumps(info, allow_nan=False))
        return 0
    from rich.console import Console

    rows = [(f"level {name}", f"{value:.6f}") for name, value in info["stage_scores"].items()]
    rows.append(("score (ratios " + ",".join(f"{r:g}" for r in args.ratios) + ")", f"{info['score']:.6f}"))
    rows += _cost_rows(info, args.resolution) + _latency_rows(info)
    rows += _memory_rows(info)
    Console().print(_figures_table(f"score of {args.file}", rows))
    return 0


def _pareto_settings(args: argparse.Namespace) -> ParetoSettings:
    return ParetoSettings(
        init=load_structure(args.init),
        points=args.points,
        iterations=args.iterations,
        seed=args.seed,
        population=args.population,
        layers=args.budget_layers,
        ratios=tuple(args.ratios),
    )


def _pareto_bar(args: argparse.Namespace, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]pareto {task.fields[point]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=Console(stderr=True), disable=bool(args.quiet))
    return bar, bar.add_task("pareto", total=total, point="")


def _log_layers(settings: ParetoSettings, px: int) -> None:
    layers, source = resolve_layers(settings)
    message = "pareto: every search is limited to %d conv layers (%s); FLOPs are counted at %d×%d px"
    LOGGER.info(message, layers, source, px, px)


def _pareto(args: argparse.Namespace) -> int:
    tables = args.latency_table or []
    if not tables:
        _latency_target(args)  # a --latency-batch without a table is said first
        raise SearchError("pareto needs a --latency-table.")
    if len(tables) > 1:
        return _pareto_targets(args, tables)
    target = _latency_target(args, tables[0])
    assert target is not None
    out = Path(args.out)
    check_output_folder(out, PARETO_NAMES, {"--init structure": args.init, "--latency-table": tables[0]})
    settings = _pareto_settings(args)
    _log_layers(settings, target.predictor.target["input_size"])
    bar, task = _pareto_bar(args, args.points * args.iterations)
    with locked_output_folder(out, PARETO_NAMES), bar:
        result = run_pareto(
            target,
            settings,
            progress=lambda i, s: bar.update(
                task, completed=i * args.iterations + s.candidates, point=f"{i + 1}/{args.points}"
            ),
        )
        paths = write_pareto(result, out)
    if not args.quiet:
        _print_front(result, paths[0])
    return 0


def _pareto_targets(args: argparse.Namespace, tables: list[str]) -> int:
    """One front per table, each priced on the others (search/pareto_targets.py)."""
    from .pareto_targets import run_pareto_targets, target_names, targets_file_names, write_pareto_targets

    names = target_names(tables)
    targets = {name: _latency_target(args, table) for name, table in zip(names, tables, strict=True)}
    out = Path(args.out)
    files = targets_file_names(names)
    inputs = {"--init structure": args.init} | {f"--latency-table {t}": t for t in tables}
    check_output_folder(out, files, inputs)
    settings = _pareto_settings(args)
    per_target = args.points * args.iterations
    bar, task = _pareto_bar(args, len(tables) * per_target)
    order = {name: k for k, name in enumerate(names)}

    def progress(name: str, i: int, s: Search) -> None:
        done = order[name] * per_target + i * args.iterations + s.candidates
        bar.update(task, completed=done, point=f"{name} {i + 1}/{args.points}")

    with locked_output_folder(out, files), bar:
        for px in sorted({t.predictor.target["input_size"] for t in targets.values() if t is not None}):
            _log_layers(settings, px)
        results, cross = run_pareto_targets(targets, settings, progress)  # type: ignore[arg-type]
        paths = write_pareto_targets(results, cross, out)
    if not args.quiet:
        for name, result in results.items():
            _print_front(result, out / f"pareto-{name}.json")
        _print_cross(cross, paths[-2])
    return 0


def _print_cross(cross: dict, path: Path) -> None:
    """Each target's best-scoring front point, priced on every target."""
    from rich.console import Console
    from rich.table import Table

    names = list(cross["targets"])
    table = Table(title=f"{PROG}: each target's best front point on every target, ms per batch ({path})")
    for column in ("front of", "score", *(f"on {n}" for n in names)):
        table.add_column(column, justify="right")
    for front_of, rows in cross["fronts"].items():
        best = max(rows, key=lambda r: r["score"])
        prices = [best["predicted_ms"][n] for n in names]
        table.add_row(front_of, f"{best['score']:.2f}", *("-" if p is None else f"{p:.4g}" for p in prices))
    Console(stderr=True).print(table)


def _print_front(result: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    batch = result["latency_target"]["batch"]
    table = Table(title=f"{PROG}: score against predicted latency ({path})", caption=result["latency_label"])
    px = result["settings"]["flops_resolution"]
    for name in ("budget ms", "predicted ms", "ms per image", "score", f"GFLOPs @{px} px", "front"):
        table.add_column(name, justify="right")
    for p in result["points"]:
        table.add_row(
            f"{p['budget_ms']:.4g}",
            f"{p['latency_ms']:.4g}",
            f"{p['latency_ms'] / batch:.4g}",
            f"{p['score']:.2f}",
            f"{p['flops'] / 1e9:.2f}",
            "yes" if p["on_front"] else "",
        )
    Console(stderr=True).print(table)


def _dispatch(args: argparse.Namespace) -> int:
    handlers = {"run": _run, "score": _score, "pareto": _pareto}
    return handlers[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_parser(), _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
