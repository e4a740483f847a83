"""``maedet-bench``: MAE-DET-S/M/L against ResNet-50/101 as C2..C5 backbones, on every backend available here."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maedet.cli import HelpFormatter, add_modes, deprecated_alias, make_parser, positive_int, run_cli
from maedet.sizes import SIZE_FORMS, InputSizeAction, OneSizeAction

from .accuracy_cli import add_accuracy_options, is_accuracy_run, run_accuracy
from .backends import BACKENDS, resolve_backends, unavailable_reason_and_hint
from .errors import BenchError
from .models import DEFAULT_MODELS, DETECTOR_MODELS, ModelSpec
from .reliability import MAX_UNCERTAINTY_PCT, MIN_ROUNDS
from .suite import BenchSettings

__all__ = ["build_parser", "build_profile_parser", "main"]

# The authors' test scale (1333, 800) for COCO's typical 640×480 image is 800×1067, padded to 800×1088.
DETECTOR_SIZES = [(800, 1088), (640, 640)]
# --quick: a check that everything runs, with ratios good enough to see the trend. At least MIN_ROUNDS interleaved
# rounds per model, even past the time budget, so no row rests on one or two runs; noisy rows are flagged.
QUICK: dict[str, Any] = dict(
    input_size=[(256, 256)], backends="torch-eager", warmup=1, rounds=8, min_rounds=MIN_ROUNDS, max_time=45.0
)
QUICK_HELP = (
    f"a quick check that the models run, and a first look at the ratios: PyTorch eager at 256x256, at least "
    f"{MIN_ROUNDS} interleaved rounds per model, about a minute for the five default models on an idle 2-core CPU "
    f"(explicit flags still win). Rows too noisy to trust are flagged unreliable; for numbers to quote, run "
    f"without --quick"
)


def _names(values: Sequence[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    """``maedet-bench [options]`` runs the benchmark; ``maedet-bench profile [options]`` profiles a latency target."""
    p = make_parser(
        "maedet-bench",
        "Measure MAE-DET-S/M/L against ResNet-50/101 (C2..C5 backbones, same input) on the backends "
        "this machine has; ratios against the ResNets are the headline, absolute times carry the machine line. "
        "'maedet-bench profile' profiles a latency target for maedet-search instead.",
    )
    _add_what_options(p)
    _add_timing_options(p)
    _add_output_options(p)
    add_accuracy_options(p)
    _add_profile_parser(add_modes(p))
    return p


def _add_what_options(p: argparse.ArgumentParser) -> None:
    """Which models on which backends at which inputs."""
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="MODEL",
        help=f"timm names, structure files (JSON or authors' txt) or detectors (maedet_m_gfl, maedet_m_gfl+nms); "
        f"default: {' '.join(DEFAULT_MODELS)}",
    )
    p.add_argument(
        "--detector",
        nargs="?",
        const=True,
        default=False,
        metavar="DETECTOR",
        help="alone: whole GFocalV2 detectors (backbone + FPN + head) of MAE-DET-S/M/L and ResNet-50/101, without and "
        "with NMS, at 800x1088 (the authors' test size for a 640x480 image) and 640x640 unless --input-size is given. "
        "With a DETECTOR (a trained detector folder, or a name with --checkpoint) and --data/--images: COCO box AP "
        "of every format this machine runs beside its latency, at one --input-size (default 640x640), batch 1",
    )
    p.add_argument(
        "--structure",
        action="append",
        default=[],
        metavar="[NAME=]FILE",
        help="add a searched structure file as a model (repeatable); its row is named by the file's stem, by its "
        "folder when two stems clash (--structure a/best.json --structure b/best.json: rows a and b), or NAME; "
        "with --detector alone, its whole detector (NAME_gfl, NAME_gfl+nms: the FPN and head of ResNet-50's)",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="BACKEND",
        help="backends or aliases cpu, cpu-all, gpu, all, space- or comma-separated (default: torch-eager, ort-cpu "
        "and, where available, the GPU set); see --list-backends",
    )
    p.add_argument("--channels-last", action="store_true", help="also measure PyTorch eager in channels-last")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (slow first compile)")
    p.add_argument("--int8", action="store_true", help="also measure ONNX Runtime CPU INT8 (Q/DQ, static)")
    p.add_argument(
        "--input-size",
        nargs="+",
        action=InputSizeAction,
        default=None,
        metavar="SIZE",
        help=f"one input size per flag: {SIZE_FORMS}, as maedet-export reads it; several sizes: repeat the flag "
        "(--input-size 480 640 --input-size 640) or give a comma list (640,800 is two square sizes); 32 to 8192 "
        "(default 640x640; with --detector 800x1088 and 640x640)",
    )
    p.add_argument("--batch-size", nargs="+", type=int, default=[1], metavar="N", help="one or more batch sizes")


def _add_timing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for every runtime (default: usable cores)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per model and backend (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="most interleaved timing rounds (default 12)")
    p.add_argument(
        "--min-rounds",
        type=int,
        default=None,
        help=f"rounds done even past the time budget (default 3; rows with fewer than {MIN_ROUNDS} rounds, or a "
        f"ratio uncertain by more than ±{MAX_UNCERTAINTY_PCT:.0f}%%, are flagged unreliable)",
    )
    p.add_argument("--iterations", type=int, default=None, help="timed runs per model per round (default: auto)")
    deprecated_alias(p, "--iters", "--iterations")
    p.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="seconds for the whole run; no new round starts that would end later (default 210, 0: none)",
    )
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--cache-dir", default=None, help="where exported ONNX files and engines are kept")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper", action="store_true", help="add published COCO AP / GFLOPs (labelled published)")
    p.add_argument("--json", default=None, metavar="FILE", help="write all results as one JSON object")
    p.add_argument("--csv", default=None, metavar="FILE", help="write one CSV line per result row")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write latency-vs-GMACs and speedup plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-backends", action="store_true", help="show which backends can run here, and exit")


def _list_backends() -> int:
    """Every backend with its status. Names never wrap (users type them); each reason and each install hint is
    written once, under the table, however many backends share it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="maedet-bench backends on this machine", title_justify="left", caption_justify="left")
    table.add_column("backend", no_wrap=True, min_width=max(len(name) for name in BACKENDS))
    table.add_column("device", no_wrap=True)
    table.add_column("precision", no_wrap=True)
    table.add_column("what", overflow="fold")
    table.add_column("status", no_wrap=True)
    reasons: list[str] = []
    hints: dict[str, list[int]] = {}
    for name, backend in BACKENDS.items():
        reason, hint = unavailable_reason_and_hint(backend)
        status = "[green]available[/]"
        if reason is not None:
            if reason not in reasons:
                reasons.append(reason)
            number = reasons.index(reason) + 1
            if hint and number not in hints.setdefault(hint, []):
                hints[hint].append(number)
            status = f"[yellow]skipped[/] ({number})"
        table.add_row(name, backend.device, backend.precision, escape(backend.description), status)
    notes = [f"({i}) {reason}" for i, reason in enumerate(reasons, 1)]
    notes += [f"to fix {', '.join(f'({n})' for n in numbers)}: {hint}" for hint, numbers in hints.items()]
    table.caption = escape("\n".join(notes)) or None
    Console().print(table)
    return 0


def _backend_spec(args: argparse.Namespace) -> str | None:
    spec = ",".join(_names(args.backends)) if args.backends is not None else (QUICK["backends"] if args.quick else None)
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


def _settings(args: argparse.Namespace) -> BenchSettings:
    """The CLI's flags as BenchSettings: explicit flags win, then --quick, then the defaults."""
    quick = QUICK if args.quick else {}
    max_time = args.max_time if args.max_time is not None else quick.get("max_time", 210.0)
    return BenchSettings(
        input_sizes=args.input_size or quick.get("input_size", DETECTOR_SIZES if args.detector else [(640, 640)]),
        batch_sizes=args.batch_size,
        threads=args.threads,
        warmup=args.warmup if args.warmup is not None else quick.get("warmup", 2),
        rounds=args.rounds if args.rounds is not None else quick.get("rounds", 12),
        min_rounds=args.min_rounds if args.min_rounds is not None else quick.get("min_rounds", 3),
        iterations=args.iterations,
        max_time_s=max_time or None,
        cache_dir=args.cache_dir,
        paper=args.paper,
        progress=not args.no_progress,
    )


def _check_output_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The --json/--csv/--plot paths, refused in one sentence before any work when they cannot be written."""
    from .outputs import check_outputs

    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise BenchError(f"the plot is written as PNG, so its name must end in .png (got {args.plot!r}).")
    from maedet.fileio import refuse_overwriting_inputs

    inputs = {f"--models {name}": name for name in args.models or ()}
    inputs.update({f"--structure {spec}": spec.partition("=")[2] or spec for spec in args.structure})
    inputs["--cache-dir"] = args.cache_dir
    refuse_overwriting_inputs(inputs, {"JSON output": args.json, "CSV output": args.csv, "plot": args.plot})
    return check_outputs({"JSON": args.json, "CSV": args.csv, "plot": args.plot})


def _model_specs(models: list[str], structures: list[str], detectors: bool) -> list[ModelSpec]:
    """The rows to measure; with ``--detector`` (alone) a ``--structure`` is measured as a whole detector (its
    backbone + the FPN and head of ResNet-50's, without and with NMS), beside the reference detectors."""
    from .detectors import structure_detectors
    from .naming import parse_models

    specs = parse_models([*models, *structures])
    if not detectors:
        return specs
    searched = [row for spec in specs[len(models) :] for row in structure_detectors(spec)]
    return parse_models(specs[: len(models)] + searched)  # a detector row named like another is refused


def _run(args: argparse.Namespace) -> int:
    if args.list_backends:
        return _list_backends()
    if is_accuracy_run(args):
        return run_accuracy(args, _settings(args))
    from rich.console import Console

    from .outputs import write_outputs
    from .report import render_table
    from .suite import run_bench

    outputs = _check_output_flags(args)
    models = _names(args.models) if args.models else list(DETECTOR_MODELS if args.detector else DEFAULT_MODELS)
    specs = _model_specs(models, args.structure, detectors=args.detector is True)
    result = run_bench(specs, _backend_spec(args), _settings(args))
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)  # files and pipes get the whole table, not 80 columns
    console.print(render_table(result))
    for what, path in write_outputs(result, outputs).items():
        console.print(f"{what}: {path}")
    console.print(f"done in {result.elapsed_s:.0f} s")
    return 0


PROFILE_SUMMARY = "profile a latency target here and write its table for maedet-search --latency-table"
PROFILE_DESCRIPTION = (
    "Profile a latency target on this machine (the operators of the search space timed in the real runtime, "
    "a fitted predictor, validated on networks it never saw) and write its table for maedet-search "
    "--latency-table. An interrupted profile resumes from OUT.partial when run again with the same settings."
)


def _add_profile_parser(modes: argparse._SubParsersAction) -> None:
    p = modes.add_parser(
        "profile",
        prog="maedet-bench profile",
        help=PROFILE_SUMMARY,
        description=PROFILE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    verbosity = p.add_mutually_exclusive_group()  # SUPPRESS: a -v given before 'profile' is kept
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    verbosity.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help="only errors")
    _add_profile_options(p)


def build_profile_parser() -> argparse.ArgumentParser:
    """The parser of ``maedet-bench profile`` (the subcommand's own, as ``maedet-bench profile --help`` shows)."""
    modes = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return modes.choices["profile"]


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--info", metavar="FILE", help="print what a latency table holds, then exit")
    p.add_argument(
        "--backend",
        default=None,
        choices=("ort-cpu", "ov-cpu", "ort-cuda", "ort-trt"),
        help="runtime (default ort-cpu)",
    )
    p.add_argument(
        "--precision", default=None, choices=("fp32", "int8"), help="int8: the exporter's CPU layout (default fp32)"
    )
    p.add_argument(
        "--input-size",
        nargs="+",
        action=OneSizeAction,
        square=True,
        default=None,
        metavar="SIZE",
        help="one square input size: 640, 640x640 or 640 640; a latency table is made for one side length "
        "(default 640; with --transfer, the FROM table's)",
    )
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="batch of the target (default 1)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="runtime threads (default: 1 on ort-cpu, the setting whose predictions hold; the usable cores on GPUs; "
        "with --transfer, the FROM table's)",
    )
    p.add_argument(
        "--train-nets", type=int, default=24, help="networks whose operators are timed (ort-cpu; default 24)"
    )
    p.add_argument("--pieces", type=int, default=160, help="pieces timed on their own (GPU backends; default 160)")
    p.add_argument(
        "--validation-nets", type=int, default=30, help="held-out networks measured end to end (also after --transfer)"
    )
    p.add_argument("--calibration-nets", type=int, default=12, help="networks that calibrate the operator sum")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per measurement")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", help="the table to write (resumes from OUT.partial when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_validate_transfer_options(p)
    _add_detector_options(p)
    _add_memory_options(p)


def _add_detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        action="store_true",
        help="whole GFocalV2 detectors too: add the FPN, head and postprocess (decode + NMS) to the table OUT "
        "(profiling it first if it does not exist), or with --validate measure --networks held-out whole detectors "
        "(10 unless given) end to end, or with --memory fit the whole detectors' memory model beside the backbones'",
    )
    p.add_argument(
        "--detector-train-nets", type=int, default=6, help="--detector: detectors whose kernels are timed (default 6)"
    )
    p.add_argument(
        "--detector-nets", type=int, default=8, help="--detector: held-out detectors of the profile (default 8)"
    )


def _profile_detector(args: argparse.Namespace) -> Any:
    """--detector: the table with its detector section added (profiled first if OUT is no table yet), or with
    --validate, its detectors validated."""
    from .profile_detector import profile_detector, validate_detectors

    progress = not args.no_progress
    if args.transfer:
        raise BenchError("--detector goes with a profile (--out) or --validate, not with --transfer.")
    if args.validate:
        _refuse_other_targets(args, args.validate, "--validate measures the table's own target")
        return validate_detectors(args.validate, args.networks or 10, out=args.out, plot=args.plot,
                                  rounds=args.rounds, seed=args.seed, progress=progress)  # fmt: skip
    if not args.out:
        raise BenchError("profile --detector needs --out FILE (the table to add the detector to).")
    if not Path(args.out).is_file() or Path(args.out + ".partial").exists():
        from .profile import profile_target

        profile_target(args.out, _profile_target_settings(args), progress=progress)
    else:
        _refuse_other_targets(args, args.out, f"{args.out!r} is already a profiled table and --detector adds to it")
    return profile_detector(args.out, train=args.detector_train_nets, held_out=args.detector_nets,
                            rounds=args.rounds, seed=args.seed, progress=progress)  # fmt: skip


def _add_memory_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--memory",
        metavar="TABLE",
        help="fit TABLE's memory model (ONNX Runtime CPU peak RSS) on --memory-fit-nets measured networks, validate it "
        "on --networks held-out ones (20 unless given) and write it into the table (OUT, default TABLE itself); with "
        "--detector, of whole detectors (FPN + GFocalV2 head + NMS, as the bench exports them)",
    )
    p.add_argument(
        "--memory-fit-nets", type=positive_int, default=32, help="networks the memory model is fitted on (default 32)"
    )
    p.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        default=None,
        help="with --memory: measure with this fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_, e.g. 131072), "
        "for deployments started with it; lower and steadier peaks (docs/memory.md). Default: glibc's own",
    )


def _print_memory_info(path: str) -> None:
    from maedet.zoo.latency import LatencyTable

    from .profile_memory import describe_memory

    text = describe_memory(LatencyTable.load(path))
    if text:
        print(text)


def _fit_memory(args: argparse.Namespace) -> int:
    """--memory: the backbones' memory model, or with --detector the whole detectors' beside it."""
    from maedet.zoo.latency.memory import table_memory_model

    from .profile_memory import describe_memory, fit_table_memory

    if args.validate or args.transfer:
        raise BenchError("--memory fits a memory model on its own; give it without --validate or --transfer.")
    fit = fit_table_memory
    if args.detector:
        from .profile_detector_memory import fit_table_detector_memory as fit
    table = fit(
        args.memory,
        args.memory_fit_nets,
        args.networks or 20,
        out=args.out,
        seed=args.seed,
        progress=not args.no_progress,
        mmap_threshold=args.malloc_mmap_threshold,
    )
    table_memory_model(table, f"latency table {args.memory!r}")  # what the search will read back
    if args.detector:
        from maedet.zoo.latency.detector_memory import table_detector_memory_model

        table_detector_memory_model(table, f"latency table {args.memory!r}")
    print(describe_memory(table))
    print(f"wrote {args.out or args.memory}")
    return 0


def _add_validate_transfer_options(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--validate",
        metavar="TABLE",
        help="measure --networks fresh held-out networks (stratified over the predicted latency range) plus "
        "MAE-DET-S/M/L and ResNet-50/101 on TABLE's target and write their measured and predicted times and the "
        "figures into the table (OUT, default TABLE itself) and a plot",
    )
    what.add_argument(
        "--transfer",
        metavar="FROM",
        help="adapt FROM (a table of the same runtime and precision profiled on another machine, thread count, "
        "input size or batch) to this machine and the given --threads/--input-size/--batch-size by timing "
        "--networks networks here, then validate it on --validation-nets held-out networks",
    )
    p.add_argument(
        "--networks",
        type=positive_int,
        default=None,
        help="how many networks: held-out ones with --validate (40 unless given), the ones a transfer is fitted on "
        "with --transfer (10 unless given)",
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help="--validate/--transfer: the validation plot (default OUT.validation.png)"
    )


def _profile_target_settings(args: argparse.Namespace) -> Any:
    from .profile import ProfileSettings

    return ProfileSettings(
        backend=args.backend or "ort-cpu",
        precision=args.precision or "fp32",
        input_size=args.input_size or 640,
        batch=args.batch_size or 1,
        threads=args.threads,
        train_nets=args.train_nets,
        pieces=args.pieces,
        calibration_nets=args.calibration_nets,
        validation_nets=args.validation_nets,
        rounds=args.rounds,
        seed=args.seed,
    )


def _validate_or_transfer(args: argparse.Namespace) -> Any:
    """--validate TABLE or --transfer FROM: the table they write."""
    if args.plot is not None and not args.plot.lower().endswith(".png"):
        raise BenchError(f"the plot is written as PNG, so its name must end in .png (got {args.plot!r}).")
    progress = not args.no_progress
    if args.validate:
        from .profile_validate import validate_table

        _refuse_other_targets(args, args.validate, "--validate measures the table's own target")
        networks = args.networks or 40
        return validate_table(
            args.validate, networks, out=args.out, plot=args.plot, rounds=args.rounds, seed=args.seed, progress=progress
        )
    from maedet.zoo.latency import LatencyTable

    from .profile_transfer import TransferSettings, check_same_runtime, transfer_table

    if not args.out:
        raise BenchError("--transfer needs --out FILE for the new table.")
    source = LatencyTable.load(args.transfer)
    check_same_runtime(source, args.backend, args.precision, f"--transfer {args.transfer!r}")
    settings = TransferSettings(
        input_size=args.input_size,
        batch=args.batch_size,
        threads=args.threads,
        networks=args.networks or 10,
        validation_nets=args.validation_nets,
        rounds=args.rounds,
        seed=args.seed,
    )
    return transfer_table(args.transfer, args.out, settings, plot=args.plot, progress=progress)


def _refuse_other_targets(args: argparse.Namespace, table_path: str, why: str) -> None:
    """Target flags that name another target than the table's are one sentence; repeating the table's is fine."""
    from maedet.zoo.latency import LatencyTable

    target = LatencyTable.load(table_path).target
    given = {
        "--backend": (args.backend, target.get("backend")),
        "--precision": (args.precision, target.get("precision")),
        "--input-size": (args.input_size, target.get("input_size")),
        "--batch-size": (args.batch_size, target.get("batch")),
        "--threads": (args.threads, target.get("threads")),
    }
    for flag, (value, own) in given.items():
        if value is not None and value != own:
            raise BenchError(f"{why}, so {flag} {value} cannot be given with it (the table's is {own}).")


def _profile(args: argparse.Namespace) -> int:
    from .profile import describe_table, profile_target

    if args.malloc_mmap_threshold is not None and not args.memory:
        raise BenchError("--malloc-mmap-threshold sets how --memory measures; give it with --memory.")
    if args.info:
        from maedet.zoo.latency import LatencyTable

        print(describe_table(LatencyTable.load(args.info)))
        _print_memory_info(args.info)
        return 0
    if args.memory:
        return _fit_memory(args)
    if args.detector:
        table = _profile_detector(args)
        print(describe_table(table))
        print(f"wrote {args.out or args.validate}")
        return 0
    if args.validate or args.transfer:
        table = _validate_or_transfer(args)
        print(describe_table(table))
        print(f"wrote {args.out or args.validate}")
        return 0
    if args.networks is not None or args.plot is not None:
        raise BenchError("--networks and --plot go with --validate or --transfer.")
    if not args.out:
        raise BenchError("profile needs --out FILE (or --info FILE to read a table).")
    table = profile_target(args.out, _profile_target_settings(args), progress=not args.no_progress)
    print(describe_table(table))
    print(f"wrote {args.out}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    return _profile(args) if args.command == "profile" else _run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), _dispatch, argv)


if __name__ == "__main__":
    raise SystemExit(main())
