"""The benchmark as a Python API: ``run_bench(...) -> BenchResult``.

Per input size and batch: count each model's cost (no compute), prepare every (backend, model) runner (ONNX
exports and engines come from the cache), warm each up while measuring its peak memory, then time all runners
in interleaved rounds until the round limit or the time budget, and derive throughput and the speedups
against ResNet-50/101 measured on the same backend in the same run (docs/design.md §6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from maedet.errors import first_line
from maedet.export import ExportError, ModelSource
from maedet.export.model_source import validate_input_size

from .backends import BACKENDS, Backend, detect_backends, resolve_backends
from .cache import ArtifactCache, default_cache_dir
from .detectors import detector_source
from .errors import BackendUnavailable, BenchError
from .machine import machine_info, usable_cores
from .memory import PeakMemory
from .memory_check import check_bench_memory
from .models import DEFAULT_MODELS, ModelCost, ModelSpec, build_deploy_source, model_cost
from .naming import parse_models
from .published import PUBLISHED_SOURCE, published_for
from .reliability import RULE, assess_reliability
from .results import BenchResult, BenchRow, Skipped, compute_speedups
from .runners import Runner, make_input, make_runner
from .timing import choose_iterations, run_interleaved, summarize, time_call

__all__ = ["BenchSettings", "cpu_settings", "run_bench"]

Key = tuple[str, str]  # (backend name, model label)


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: inputs, threads, warm-up, rounds and the time budget (the CLI's flags, as Python).

    ``rounds`` is the most interleaved rounds; once ``min_rounds`` are done, no round starts that would end after
    ``max_time_s`` seconds from the start (None: no budget). ``iterations`` per model per round: None picks them
    from the warm-up latency (one for slow CPU runs, more for fast GPU ones). ``threads``: None uses the cores
    this process may run on.
    """

    input_sizes: Sequence[Sequence[int]] = ((640, 640),)
    batch_sizes: Sequence[int] = (1,)
    threads: int | None = None
    warmup: int = 2
    rounds: int = 12
    min_rounds: int = 3
    iterations: int | None = None
    max_time_s: float | None = 210.0
    cache_dir: str | os.PathLike[str] | None = None
    paper: bool = False
    seed: int = 0
    progress: bool = False

    def sizes(self) -> list[tuple[int, int]]:
        """The input sizes as (H, W), each from 32 (the backbones' C5 stride) to 8192."""
        try:
            sizes = [validate_input_size(size) for size in self.input_sizes]
        except ExportError as exc:
            raise BenchError(str(exc)) from None
        if not sizes:
            raise BenchError("no input size was given.")
        return sizes

    def validated(self) -> BenchSettings:
        """These settings with threads filled in and min_rounds capped at rounds, or one sentence saying why not."""
        self.sizes()
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise BenchError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}.")
        threads = self.threads or usable_cores()
        if threads < 1:
            raise BenchError(f"threads must be at least 1, got {threads}.")
        if threads > 4 * usable_cores():  # as bench profile: more only oversubscribes (100000 could not start)
            raise BenchError(
                f"threads must be between 1 and {4 * usable_cores()} (4× the usable cores), got {threads:,}."
            )
        if self.warmup < 1:
            raise BenchError("warm-up needs at least 1 run (the first run of every runtime is not representative).")
        if self.rounds < 1 or self.min_rounds < 1:
            raise BenchError("rounds and min_rounds must be at least 1.")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError(f"iterations must be at least 1, got {self.iterations}.")
        if self.max_time_s is not None and not (math.isfinite(self.max_time_s) and self.max_time_s >= 0):
            raise BenchError(f"the time budget must be a finite number of seconds (0: none), got {self.max_time_s}.")
        return dataclasses.replace(self, threads=threads, min_rounds=min(self.min_rounds, self.rounds))

    def to_config(self, labels: list[str], backends: list[str]) -> dict[str, Any]:
        """The run's settings as the result's ``config`` (JSON)."""
        return {
            "models": labels,
            "backends": backends,
            "input_sizes": [list(s) for s in self.sizes()],
            "batch_sizes": [int(b) for b in self.batch_sizes],
            "threads": self.threads,
            "warmup": self.warmup,
            "max_rounds": self.rounds,
            "min_rounds": self.min_rounds,
            "iterations": self.iterations or "auto",
            "max_time_s": self.max_time_s,
            "denormals": "flushed to zero",
            "timing": "interleaved rounds, rotated order; median/p90 over all timed runs",
            "reliability": RULE,
            "form": "deploy form (BN folded), C2..C5 feature outputs; detectors (*_gfl): backbone + FPN + GFocalV2 "
            "head raw outputs, +nms: with decoding and NMS (see maedet.bench.detectors for the NMS workload)",
        }


@contextlib.contextmanager
def cpu_settings(threads: int) -> Iterator[None]:
    """Fixed thread count and denormals flushed to zero (random weights must not hit slow denormal paths)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.set_flush_denormal(False)


class _Progress:
    """One rich progress bar over the whole run (or nothing, for tests and --no-progress)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self._bar = None
        self._total = total
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]bench[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self._total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def step(self, description: str | None = None, advance: int = 1) -> None:
        if self._bar is not None:
            if description is None:
                self._bar.update(self._task, advance=advance)
            else:
                self._bar.update(self._task, advance=advance, description=description)


def _first_run_failures() -> tuple[type[BaseException], ...]:
    """What a runner's first runs may legitimately hit: memory exhaustion, or a runtime refusing the model."""
    import torch

    return (MemoryError, torch.cuda.OutOfMemoryError, BackendUnavailable, ExportError)


@dataclass
class _Run:
    """Everything one run_bench call shares across its input sizes and batches."""

    specs: list[ModelSpec]
    active: list[Backend]
    settings: BenchSettings
    cache: ArtifactCache
    bar: _Progress
    skipped: list[Skipped]
    deploy: dict[str, ModelSource] = field(default_factory=dict)

    def deploy_source(self, spec: ModelSpec) -> ModelSource:
        if spec.label not in self.deploy:
            self.deploy[spec.label] = detector_source(spec) if spec.detector else build_deploy_source(spec)
        return self.deploy[spec.label]


def _prepare_runners(run: _Run, data: Any) -> dict[Key, Runner]:
    batch, _, h, w = data.shape
    runners: dict[Key, Runner] = {}
    for backend in run.active:
        for spec in run.specs:
            run.bar.step(f"preparing {spec.label} on {backend.name} ({batch}×3×{h}×{w})")
            try:
                runners[(backend.name, spec.label)] = make_runner(
                    backend, spec, data, run.settings.threads or 1, run.cache, lambda s=spec: run.deploy_source(s)
                )
            except BackendUnavailable as exc:
                run.skipped.append(Skipped(backend.name, str(exc), spec.label))
    run.deploy.clear()  # runners hold what they need
    return runners


def _warm_up(run: _Run, runners: dict[Key, Runner]) -> tuple[dict[Key, float | None], dict[Key, int]]:
    """Untimed first runs, measuring peak memory; runners that fail here are skipped with the reason."""
    memory: dict[Key, float | None] = {}
    iters: dict[Key, int] = {}
    for key, runner in list(runners.items()):
        run.bar.step(f"warm-up {key[1]} on {key[0]}")
        try:
            with PeakMemory(BACKENDS[key[0]].memory_kind) as peak:
                warm = [time_call(runner) for _ in range(run.settings.warmup)]
        except _first_run_failures() as exc:
            runner.close()
            del runners[key]
            run.skipped.append(Skipped(key[0], f"failed on its first runs: {first_line(exc)}", key[1]))
            continue
        memory[key] = peak.megabytes
        iters[key] = run.settings.iterations or choose_iterations(warm[-1])
    run.bar.step(advance=len(run.specs) * len(run.active) - len(memory))  # runners that could not be made or run
    return memory, iters


def _time_rounds(
    run: _Run, runners: dict[Key, Runner], iters: dict[Key, int], budget_end: float | None, shape: str
) -> tuple[dict[Key, list[float]], int]:
    """Interleaved timing; returns each runner's times and how many rounds were done."""
    done = [0]

    def on_round(finished: int, planned: int) -> None:
        done[0] = finished
        run.bar.step(f"round {finished}/{planned} ({shape})")

    settings = run.settings
    times: dict[Any, list[float]] = {}
    if runners:
        times = run_interleaved(
            runners,
            iters,
            max_rounds=settings.rounds,
            min_rounds=settings.min_rounds,
            deadline=budget_end,
            on_round=on_round,
        )
    if done[0] < settings.rounds:
        run.bar.step("time budget reached", advance=settings.rounds - done[0])
    return times, done[0]


def _measure(run: _Run, size: tuple[int, int], batch: int, budget_end: float | None) -> list[BenchRow]:
    """Every active backend × model at one input size and batch."""
    h, w = size
    data = make_input(batch, h, w, run.settings.seed)
    costs: dict[str, ModelCost] = {s.label: model_cost(s, h, w) for s in run.specs}
    runners = _prepare_runners(run, data)
    memory, iters = _warm_up(run, runners)
    times, rounds = _time_rounds(run, runners, iters, budget_end, f"{batch}×3×{h}×{w}")
    rows = []
    for (backend_name, label), samples in times.items():
        backend = BACKENDS[backend_name]
        pub = published_for(label) if run.settings.paper else None
        rows.append(
            BenchRow(
                model=label,
                backend=backend_name,
                precision=backend.precision,
                device=backend.device,
                batch=batch,
                input=(h, w),
                params=costs[label].params,
                gmacs=costs[label].gmacs,
                latency=summarize(samples),
                iterations_per_round=iters[(backend_name, label)],
                rounds=rounds,
                peak_memory_mb=memory[(backend_name, label)],
                memory_kind=backend.memory_kind,
                published=None if pub is None else {**pub.__dict__, "source": PUBLISHED_SOURCE},
            )
        )
    for runner in runners.values():
        runner.close()
    return rows


def run_bench(
    models: Sequence[str | ModelSpec] = DEFAULT_MODELS,
    backends: str | Sequence[str] | None = None,
    settings: BenchSettings | None = None,
    **kwargs: Any,
) -> BenchResult:
    """Measure ``models`` (C2..C5 backbones) on ``backends`` and return every row, plus what was skipped and why.

    ``backends``: None/'auto' for the defaults, a comma list or a list of names (see ``maedet.bench.BACKENDS``).
    Settings come as a :class:`BenchSettings` or as its fields by keyword (``run_bench(rounds=4)``); keywords
    given with ``settings`` replace those fields.
    """
    started = time.monotonic()
    try:
        settings = dataclasses.replace(settings or BenchSettings(), **kwargs)
    except TypeError:
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(BenchSettings)})
        raise BenchError(f"run_bench has no setting {', '.join(unknown)}.") from None
    specs = parse_models(models)
    names = resolve_backends(backends if backends is None or isinstance(backends, str) else ",".join(backends))
    settings = settings.validated()
    statuses = detect_backends(names)
    configs = [(size, int(b)) for size in settings.sizes() for b in settings.batch_sizes]
    check_bench_memory(specs, configs)
    active = [s.backend for s in statuses if s.available]
    skipped = [Skipped(s.backend.name, s.reason or "") for s in statuses if not s.available]
    deadline_at = started + settings.max_time_s if settings.max_time_s else None
    per_config = len(specs) * len(active) * 2 + settings.rounds
    rows: list[BenchRow] = []
    with cpu_settings(settings.threads or 1), _Progress(settings.progress, per_config * len(configs)) as bar:
        run = _Run(specs, active, settings, ArtifactCache(settings.cache_dir or default_cache_dir()), bar, skipped)
        for index, (size, batch) in enumerate(configs):
            budget_end = None
            if deadline_at is not None:  # the remaining time is shared evenly by the remaining configurations
                now = time.monotonic()
                budget_end = now + max(0.0, deadline_at - now) / (len(configs) - index)
            rows += _measure(run, size, batch, budget_end)
    compute_speedups(rows)
    assess_reliability(rows)
    labels = [s.label for s in specs]
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (r.input, r.batch, order.get(r.backend, 99), labels.index(r.model)))
    return BenchResult(
        machine=machine_info(settings.threads),
        config=settings.to_config(labels, names),
        results=rows,
        skipped=skipped,
        elapsed_s=time.monotonic() - started,
        paper=settings.paper,
    )
