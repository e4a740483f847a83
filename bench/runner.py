"""The benchmark as a Python API: ``run_bench(...) -> BenchResult``.

Per input size and batch: count each model's cost (no compute), prepare every (backend, model) runner (ONNX
exports and engines come from the cache), warm each up while measuring its peak memory, then time all runners
in interleaved rounds until the round limit or the time budget, and derive throughput and the speedups
against ResNet-50/101 measured on the same backend in the same run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, Backend, detect_backends, resolve_backends
from .errors import BenchError
from .machine import machine_info, usable_cores
from .memory import MEMORY_KINDS, PeakMemory
from .models import DEFAULT_MODELS, REFERENCE_MODELS, ModelCost, ModelSpec, build_deploy_source, model_cost, parse_model
from .published import PUBLISHED_HEADLINE, PUBLISHED_SOURCE, published_for
from .runners import ArtifactCache, BackendUnavailable, OrtRunner, TorchRunner, TrtRunner, make_input
from .timing import LatencyStats, choose_iterations, run_interleaved, summarize, time_call

__all__ = ["BenchResult", "BenchRow", "Skipped", "compute_speedups", "default_cache_dir", "run_bench"]


def default_cache_dir() -> Path:
    """$MAEDET_CACHE/bench, else $XDG_CACHE_HOME/maedet/bench, else ~/.cache/maedet/bench."""
    if os.environ.get("MAEDET_CACHE"):
        return Path(os.environ["MAEDET_CACHE"]).expanduser() / "bench"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "maedet" / "bench"


@dataclass
class BenchRow:
    """One model on one backend at one input size and batch."""

    model: str
    backend: str
    precision: str
    device: str
    batch: int
    input: tuple[int, int]  # (H, W)
    params: int
    gmacs: float  # per image at this input
    latency: LatencyStats  # per inference (the whole batch), ms
    iterations_per_round: int
    rounds: int
    peak_memory_mb: float | None
    memory_kind: str
    speedup: dict[str, float | None] = field(default_factory=dict)  # reference latency / this latency
    published: dict[str, Any] | None = None

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1000.0 / self.latency.median if self.latency.median > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "batch": self.batch,
            "input": list(self.input),
            "params": self.params,
            "gmacs": self.gmacs,
            "latency_ms": self.latency.to_dict(),
            "throughput": self.throughput,
            "speedup": dict(self.speedup),
            "peak_memory_mb": self.peak_memory_mb,
            "memory_kind": self.memory_kind,
            "iterations_per_round": self.iterations_per_round,
            "rounds": self.rounds,
        }
        if self.published is not None:
            out["published"] = self.published
        return out


@dataclass(frozen=True)
class Skipped:
    """A backend (or one model on it) that was asked for but could not be measured, and why."""

    backend: str
    reason: str
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "reason": self.reason}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[BenchRow]
    skipped: list[Skipped]
    elapsed_s: float = 0.0
    paper: bool = False

    def row(self, model: str, backend: str, batch: int | None = None, input: tuple[int, int] | None = None) -> BenchRow:
        for r in self.results:
            if r.model == model and r.backend == backend and batch in (None, r.batch) and input in (None, r.input):
                return r
        raise KeyError(f"no result for {model} on {backend}")

    def latency_ratio(self, model: str, reference: str, backend: str) -> float:
        """Median latency of ``model`` over that of ``reference`` on ``backend`` (first input/batch)."""
        return self.row(model, backend).latency.median / self.row(reference, backend).latency.median

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "machine": self.machine,
            "config": self.config,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "memory_kinds": {k: MEMORY_KINDS[k] for k in sorted({r.memory_kind for r in self.results})},
            "elapsed_s": self.elapsed_s,
        }
        if self.paper:
            out["published_source"] = PUBLISHED_SOURCE
            out["published_headline"] = PUBLISHED_HEADLINE
        return out


def compute_speedups(rows: Sequence[BenchRow], references: Sequence[str] = REFERENCE_MODELS) -> None:
    """Set each row's speedup vs every reference model: reference median latency / row median latency.

    Only rows of the same backend, batch and input are compared; None where the reference was not measured.
    """
    for row in rows:
        for ref in references:
            match = [
                r
                for r in rows
                if r.model == ref and r.backend == row.backend and r.batch == row.batch and r.input == row.input
            ]
            row.speedup[ref] = (
                match[0].latency.median / row.latency.median if match and row.latency.median > 0 else None
            )


def _validate_sizes(input_sizes: Sequence[Sequence[int]], batch_sizes: Sequence[int]) -> list[tuple[int, int]]:
    sizes = []
    for size in input_sizes:
        if len(size) != 2:
            raise BenchError(f"an input size needs two numbers (H W), got {list(size)}.")
        h, w = int(size[0]), int(size[1])
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise BenchError(
                f"input size {h}×{w} is not usable: H and W must be multiples of 32 (the backbones' C5 stride), "
                "at least 32."
            )
        sizes.append((h, w))
    if not sizes:
        raise BenchError("no input size was given.")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise BenchError(f"batch sizes must be positive integers, got {list(batch_sizes)}.")
    return sizes


@contextlib.contextmanager
def _cpu_settings(threads: int) -> Iterator[None]:
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


def _onnx_precision(backend: Backend) -> str:
    """Which exported graph a backend runs: the graph carries the precision, except for the TensorRT EP,
    which lowers an fp32 graph itself (trt_fp16_enable)."""
    if backend.provider == "TensorrtExecutionProvider":
        return "fp32"
    return backend.precision


def _int8_mode(backend: Backend) -> str | None:
    """The exporter's INT8 layout: ONNX Runtime CPU's fast uint8-activation layout, or the portable symmetric one
    TensorRT needs. None where the exporter has no such choice (an older maedet.export)."""
    if backend.precision != "int8":
        return None
    import inspect

    from maedet.export import export_onnx

    if "int8_mode" not in inspect.signature(export_onnx).parameters:
        return None
    return "cpu" if backend.device == "cpu" else "portable"


def run_bench(
    models: Sequence[str | ModelSpec] = DEFAULT_MODELS,
    backends: str | Sequence[str] | None = None,
    *,
    input_sizes: Sequence[Sequence[int]] = ((640, 640),),
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 2,
    rounds: int = 12,
    min_rounds: int = 3,
    iterations: int | None = None,
    max_time_s: float | None = 210.0,
    cache_dir: str | os.PathLike[str] | None = None,
    paper: bool = False,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure ``models`` (C2..C5 backbones) on ``backends`` and return every row, plus what was skipped and why.

    ``backends``: None/'auto' for the defaults, a comma list or a list of names (see ``maedet.bench.BACKENDS``).
    ``rounds`` is the most interleaved rounds; once ``min_rounds`` are done, no round starts that would end
    after ``max_time_s`` seconds from the start (None: no budget). ``iterations`` per model per round: None picks
    them from the warm-up latency (one for slow CPU runs, more for fast GPU ones).
    """
    started = time.monotonic()
    say = log or (lambda _m: None)
    specs = [m if isinstance(m, ModelSpec) else parse_model(m) for m in models]
    if not specs:
        raise BenchError("no model was given.")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise BenchError(f"a model was named twice: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}.")
    names = resolve_backends(backends if backends is None or isinstance(backends, str) else ",".join(backends))
    sizes = _validate_sizes(input_sizes, batch_sizes)
    threads = threads or usable_cores()
    if threads < 1:
        raise BenchError(f"threads must be at least 1, got {threads}.")
    if warmup < 1:
        raise BenchError("warm-up needs at least 1 run (the first run of every runtime is not representative).")
    if rounds < 1 or min_rounds < 1:
        raise BenchError("rounds and min_rounds must be at least 1.")
    if iterations is not None and iterations < 1:
        raise BenchError(f"iterations must be at least 1, got {iterations}.")
    min_rounds = min(min_rounds, rounds)
    cache = ArtifactCache(cache_dir or default_cache_dir(), log=say)

    statuses = detect_backends(names)
    active = [s.backend for s in statuses if s.available]
    skipped = [Skipped(s.backend.name, s.reason or "") for s in statuses if not s.available]
    configs = [(size, int(b)) for size in sizes for b in batch_sizes]
    deadline_at = started + max_time_s if max_time_s else None
    rows: list[BenchRow] = []
    deploy_modules: dict[str, Any] = {}

    per_config = len(specs) * len(active) * 2 + rounds
    with _cpu_settings(threads), _Progress(progress, per_config * len(configs)) as bar:
        for index, ((h, w), batch) in enumerate(configs):
            data = make_input(batch, h, w, seed)
            costs: dict[str, ModelCost] = {s.label: model_cost(s, h, w) for s in specs}

            runners: dict[tuple[str, str], Any] = {}
            for backend in active:
                for spec in specs:
                    bar.step(f"preparing {spec.label} on {backend.name} ({batch}×3×{h}×{w})")
                    try:
                        runners[(backend.name, spec.label)] = _make_runner(
                            backend, spec, data, threads, cache, deploy_modules
                        )
                    except BackendUnavailable as exc:
                        skipped.append(Skipped(backend.name, str(exc), spec.label))
            deploy_modules.clear()  # runners hold what they need

            memory: dict[tuple[str, str], float | None] = {}
            iters: dict[tuple[str, str], int] = {}
            for key, run in list(runners.items()):
                bar.step(f"warm-up {key[1]} on {key[0]}")
                try:
                    with PeakMemory(BACKENDS[key[0]].memory_kind) as peak:
                        warm = [time_call(run) for _ in range(warmup)]
                except (RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory, a compile failure
                    run.close()
                    del runners[key]
                    skipped.append(Skipped(key[0], f"failed on its first runs: {_first_line(exc)}", key[1]))
                    continue
                memory[key] = peak.megabytes
                iters[key] = iterations or choose_iterations(warm[-1])
            bar.step(advance=len(specs) * len(active) - len(memory))  # runners that could not be made or run

            remaining = len(configs) - index
            budget_end = None
            if deadline_at is not None:
                now = time.monotonic()
                budget_end = now + max(0.0, deadline_at - now) / remaining
            done = [0]

            def on_round(
                finished: int, planned: int, _done: list[int] = done, _shape: str = f"{batch}×3×{h}×{w}"
            ) -> None:
                _done[0] = finished
                bar.step(f"round {finished}/{planned} ({_shape})")

            times = (
                run_interleaved(
                    runners, iters, max_rounds=rounds, min_rounds=min_rounds, deadline=budget_end, on_round=on_round
                )
                if runners
                else {}
            )
            if done[0] < rounds:
                bar.step("time budget reached", advance=rounds - done[0])
            for (backend_name, label), samples in times.items():
                backend = BACKENDS[backend_name]
                pub = published_for(label) if paper else None
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
                        rounds=done[0],
                        peak_memory_mb=memory[(backend_name, label)],
                        memory_kind=backend.memory_kind,
                        published=None if pub is None else {**pub.__dict__, "source": PUBLISHED_SOURCE},
                    )
                )
            for run in runners.values():
                run.close()
    compute_speedups(rows)
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (r.input, r.batch, order.get(r.backend, 99), labels.index(r.model)))
    config = {
        "models": labels,
        "backends": names,
        "input_sizes": [list(s) for s in sizes],
        "batch_sizes": [int(b) for b in batch_sizes],
        "threads": threads,
        "warmup": warmup,
        "max_rounds": rounds,
        "min_rounds": min_rounds,
        "iterations": iterations or "auto",
        "max_time_s": max_time_s,
        "denormals": "flushed to zero",
        "timing": "interleaved rounds, rotated order; median/p90 over all timed runs",
        "form": "deploy form (BN folded), C2..C5 feature outputs",
    }
    return BenchResult(
        machine=machine_info(threads),
        config=config,
        results=rows,
        skipped=skipped,
        elapsed_s=time.monotonic() - started,
        paper=paper,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _make_runner(
    backend: Backend, spec: ModelSpec, data: Any, threads: int, cache: ArtifactCache, deploy_modules: dict[str, Any]
) -> Any:
    """Build one runner; problems that only show when trying become BackendUnavailable (a skipped row)."""

    def deploy_source() -> Any:
        if spec.label not in deploy_modules:
            deploy_modules[spec.label] = build_deploy_source(spec)
        return deploy_modules[spec.label]

    if backend.runtime == "torch":
        try:
            return TorchRunner(deploy_source().module, backend, data)
        except (RuntimeError, ValueError) as exc:
            raise BackendUnavailable(f"PyTorch could not set up the model: {str(exc).strip()[:200]}") from None
    batch, _, h, w = data.shape
    onnx_path = cache.onnx(
        spec, _onnx_precision(backend), batch, h, w, module_factory=deploy_source, int8_mode=_int8_mode(backend)
    )
    if backend.runtime == "onnxruntime":
        return OrtRunner(onnx_path, backend, data, threads, cache.root)
    return TrtRunner(cache.engine(onnx_path, backend.precision), data)
