"""Profile a latency target: time the pieces of the search space in the real runtime, fit, calibrate, validate.

``profile_target`` measures, on this machine and runtime, the pieces backbones of the search space are made of
(stems, first blocks with their projection shortcut, repeated identity blocks), each exported to ONNX in deploy form
(BN folded) and timed in a real ONNX Runtime session with fixed threads, in interleaved rounds. It fits the
per-piece model of :mod:`maedet.zoo.latency`, calibrates the sum on a few whole networks, then proves the prediction
on networks it never saw (random members of the search space from small to large, plus MAE-DET-S/M/L), and stores
ResNet-50/101's measured latencies so budgets can be given relative to them. Partial results are saved after every
group of measurements, so an interrupted profile resumes where it stopped. docs/latency.md explains the choices.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text, check_output_path
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable, Piece, fit_piece_model, structure_pieces

from .machine import cpu_model, machine_info, usable_cores
from .timing import choose_iterations, run_interleaved, summarize, time_call

__all__ = ["ProfileSettings", "describe_table", "profile_target", "sample_structures", "validation_figures"]

LOG = logging.getLogger(__name__)
BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt")
PRECISIONS = ("fp32", "int8")
REFERENCES = ("resnet50", "resnet101")
PUBLISHED = ("maedet_s", "maedet_m", "maedet_l")
GROUP = 8  # pieces timed together in interleaved rounds
PARTIAL_FORMAT = "maedet-latency-profile-partial/1"


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how much. The defaults fit one CPU target at 640×640 in about 15 minutes on 2 cores."""

    backend: str = "ort-cpu"
    precision: str = "fp32"
    input_size: int = 640
    batch: int = 1
    threads: int | None = None
    pieces: int = 160
    calibration_nets: int = 6
    validation_nets: int = 30
    rounds: int = 5
    seed: int = 0
    opset: int = 18

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MaeDetError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}.")
        if self.precision not in PRECISIONS:
            raise MaeDetError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        if self.backend != "ort-cpu" and self.precision == "int8":
            raise MaeDetError("INT8 profiles use the exporter's CPU layout: profile them on ort-cpu.")
        limits = {"input_size": (32, 2048), "batch": (1, 256), "pieces": (8, 5000), "rounds": (1, 100)}
        limits |= {"calibration_nets": (1, 100), "validation_nets": (1, 500)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise MaeDetError(f"profile setting {name} must be between {lo} and {hi}, got {value}.")
        if self.threads is not None and not 1 <= self.threads <= 4 * usable_cores():
            raise MaeDetError(f"threads must be between 1 and {4 * usable_cores()}, got {self.threads}.")

    @property
    def thread_count(self) -> int:
        return self.threads or usable_cores()

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        data["threads"] = self.thread_count
        return data


# ------------------------------------------------------------------------------------------- what to measure
def sample_structures(count: int, seed: int, resolution: int, max_mutations: int = 40) -> list[Structure]:
    """Random members of the search space from small to large: mutants of the R50-like start and of MAE-DET-S/M/L."""
    from maedet.search import SearchSpace

    rng = random.Random(seed)
    seeds = [builtin_structure(n) for n in ("r50_like_init", "maedet_s", "maedet_m", "maedet_l")]
    out: list[Structure] = []
    seen: set[tuple[int, ...]] = set()
    attempts = 0
    while len(out) < count and attempts < count * 50:
        attempts += 1
        base = seeds[attempts % len(seeds)]
        space = SearchSpace.from_structure(base, resolution)
        genome = space.encode(base)
        for _ in range(rng.randint(1, max_mutations)):
            genome = space.mutate(genome, rng) or genome
        if genome not in seen:
            seen.add(genome)
            out.append(space.decode(genome))
    return out


def plan_pieces(settings: ProfileSettings) -> list[Piece]:
    """Pieces drawn from random structures of the space, every kind represented, ``settings.pieces`` in all."""
    rng = random.Random(settings.seed + 1)
    pool: dict[str, list[Piece]] = {"stem": [], "first": [], "rest": []}
    seen: set[Piece] = set()
    for s in sample_structures(max(60, settings.pieces // 2), settings.seed + 2, settings.input_size):
        for piece, _count in structure_pieces(s, settings.input_size):
            if piece not in seen:
                seen.add(piece)
                pool[piece.kind].append(piece)
    share = {"stem": 0.1, "first": 0.45, "rest": 0.45}
    chosen: list[Piece] = []
    for kind, items in pool.items():
        rng.shuffle(items)
        chosen += items[: max(4, round(settings.pieces * share[kind]))]
    return chosen


# ------------------------------------------------------------------------------------------- building runnables
def _piece_module(piece: Piece) -> Any:
    from maedet.zoo.maedet import Bottleneck, ConvBnAct

    if piece.kind == "stem":
        return ConvBnAct(piece.in_chs, piece.out_chs, piece.kernel_size, piece.stride)
    return Bottleneck(
        piece.in_chs,
        piece.out_chs,
        piece.bottleneck_chs,
        piece.kernel_size,
        piece.stride,
        project=piece.kind == "first",
    )


def _randomize_bn(module: Any, seed: int) -> None:
    """Plausible BN statistics, so a folded conv has realistic weights (zero-init would make INT8 trivial)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=gen) + 0.5


def _to_onnx(module: Any, shape: Sequence[int], output_names: Sequence[str], settings: ProfileSettings) -> bytes:
    import torch

    from maedet.export.onnx_export import torch_to_onnx
    from maedet.zoo import fuse_bn

    deploy = fuse_bn(module.eval())
    example = torch.rand(*shape)
    proto = torch_to_onnx(deploy, example, output_names, dynamic=False, opset=settings.opset)
    if settings.precision == "int8":
        from maedet.export.precision import quantize_int8

        calib = [np.random.default_rng(0).random(tuple(shape), dtype=np.float32)]
        proto = quantize_int8(proto, calib, mode="cpu")
    return proto.SerializeToString()


def _session(model: bytes, settings: ProfileSettings) -> Any:
    from maedet.export.runtime import ort_providers, ort_session

    provider = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}.get(
        settings.backend, "TensorrtExecutionProvider"
    )
    providers = ort_providers(provider, fp16=settings.precision == "fp16")
    return ort_session(model, providers=providers, threads=settings.thread_count, what="a profiled piece")


def _runner(model: bytes, shape: Sequence[int], settings: ProfileSettings) -> Callable[[], object]:
    session = _session(model, settings)
    feed = {session.get_inputs()[0].name: np.random.default_rng(1).random(tuple(shape), dtype=np.float32)}
    return lambda: session.run(None, feed)


def _piece_runner(piece: Piece, settings: ProfileSettings) -> Callable[[], object]:
    module = _piece_module(piece)
    _randomize_bn(module, hash(piece) & 0xFFFF)
    shape = (settings.batch, piece.in_chs, piece.size, piece.size)
    return _runner(_to_onnx(module, shape, ["y"], settings), shape, settings)


def _network_runner(name: str, structure: Structure | None, settings: ProfileSettings) -> Callable[[], object]:
    """A whole backbone as the bench times it: deploy form, C2..C5 outputs."""
    from maedet.export.model_source import resolve_model

    source = resolve_model("maedet", structure=structure) if structure is not None else resolve_model(name)
    shape = (settings.batch, 3, settings.input_size, settings.input_size)
    return _runner(_to_onnx(source.module, shape, source.output_names, settings), shape, settings)


# ------------------------------------------------------------------------------------------- measuring
def _time_group(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms of each runner, timed in interleaved rounds after a warm-up run each."""
    first = {}
    for key, fn in runners.items():
        fn()  # warm-up: the first run allocates
        first[key] = time_call(fn)
    iterations = {k: choose_iterations(v, target_round_s=0.05, cap=20) for k, v in first.items()}
    times = run_interleaved(runners, iterations, max_rounds=rounds, min_rounds=rounds)
    return {k: summarize(v).median for k, v in times.items()}


class _State:
    """Measurements so far, saved beside the output after every group so an interrupted profile resumes."""

    def __init__(self, out: Path, settings: ProfileSettings) -> None:
        self.path = out.with_name(out.name + ".partial")
        self.settings = settings
        self.pieces: dict[str, float] = {}
        self.nets: dict[str, float] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        import json

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            LOG.warning("ignoring an unreadable partial profile %s", self.path)
            return
        if data.get("format") != PARTIAL_FORMAT or data.get("settings") != self.settings.fingerprint():
            diff = [k for k, v in self.settings.fingerprint().items() if (data.get("settings") or {}).get(k) != v]
            raise MaeDetError(
                f"{self.path} holds a partial profile with other settings ({', '.join(diff) or 'format'}); "
                "delete it or profile with the same settings."
            )
        self.pieces = {k: float(v) for k, v in data.get("pieces", {}).items()}
        self.nets = {k: float(v) for k, v in data.get("nets", {}).items()}
        LOG.info("resuming: %d pieces and %d networks already measured", len(self.pieces), len(self.nets))

    def save(self) -> None:
        import json

        data = {"format": PARTIAL_FORMAT, "settings": self.settings.fingerprint()}
        data |= {"pieces": self.pieces, "nets": self.nets}
        atomic_write_text(self.path, json.dumps(data) + "\n", "partial profile")

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def validation_figures(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """RMSPE, the share within ±10%, and Spearman's ρ of predictions against measurements."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    rel = (p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan")
    return {
        "count": len(p),
        "rmspe_pct": float(100 * math.sqrt(float(np.mean(rel**2)))),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10 + 1e-12)),  # ±10% inclusive, float-safe
        "max_abs_err_pct": float(100 * np.max(np.abs(rel))),
        "spearman_rho": rho,
    }


# ------------------------------------------------------------------------------------------- the profile
@dataclass
class _Plan:
    pieces: list[Piece]
    calibration: dict[str, Structure]
    validation: dict[str, Structure]

    @property
    def total(self) -> int:
        return len(self.pieces) + len(self.calibration) + len(self.validation) + len(REFERENCES)


def _plan(settings: ProfileSettings) -> _Plan:
    nets = sample_structures(
        settings.calibration_nets + settings.validation_nets, settings.seed + 3, settings.input_size
    )
    calibration = {f"cal{i}": s for i, s in enumerate(nets[: settings.calibration_nets])}
    validation = {f"val{i}": s for i, s in enumerate(nets[settings.calibration_nets :])}
    validation |= {name: builtin_structure(name) for name in PUBLISHED}
    return _Plan(plan_pieces(settings), calibration, validation)


def _measure_pieces(plan: _Plan, state: _State, settings: ProfileSettings, step: Callable[[int], None]) -> None:
    todo = [p for p in plan.pieces if p.key() not in state.pieces]
    step(len(plan.pieces) - len(todo))
    for start in range(0, len(todo), GROUP):
        group = todo[start : start + GROUP]
        runners = {p.key(): _piece_runner(p, settings) for p in group}
        state.pieces |= _time_group(runners, settings.rounds)
        state.save()
        step(len(group))


def _measure_nets(names: dict[str, Structure | None], state: _State, settings: ProfileSettings, step) -> None:
    for name, structure in names.items():
        if name in state.nets:
            step(1)
            continue
        runner = _network_runner(name, structure, settings)
        state.nets |= _time_group({name: runner}, settings.rounds)
        state.save()
        step(1)


def _calibrate(table: LatencyTable, calibration: dict[str, Structure], nets: dict[str, float]) -> dict[str, float]:
    """measured ≈ scale · Σ pieces + offset, weighted by 1/measured (relative error), on the calibration networks."""
    raw = np.asarray([table.raw_sum_ms(s) for s in calibration.values()])
    meas = np.asarray([nets[n] for n in calibration])
    if len(raw) < 2:
        return {"scale": float(meas.sum() / raw.sum()), "offset_ms": 0.0}
    w = 1.0 / meas
    a = np.stack([raw * w, w], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(a, meas * w, rcond=None)
    if scale <= 0:
        return {"scale": float(meas.sum() / raw.sum()), "offset_ms": 0.0}
    return {"scale": float(scale), "offset_ms": float(offset)}


def _build_table(plan: _Plan, state: _State, settings: ProfileSettings, started: float) -> LatencyTable:
    import time

    pieces = [p for p in plan.pieces]
    model = fit_piece_model(pieces, [state.pieces[p.key()] for p in pieces], settings.batch)
    info = machine_info(settings.thread_count)
    target = {
        "backend": settings.backend,
        "precision": settings.precision,
        "batch": settings.batch,
        "input_size": settings.input_size,
        "threads": settings.thread_count,
        "device": cpu_model() if settings.backend == "ort-cpu" else str((info.get("gpu") or {}).get("name")),
    }
    table = LatencyTable(target=target, model=model)
    table.calibration = _calibrate(table, plan.calibration, state.nets)
    rows = [
        {"name": n, "structure": s.to_authors(), "measured_ms": state.nets[n], "predicted_ms": table.predict_ms(s)}
        for n, s in plan.validation.items()
    ]
    figures = validation_figures([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
    table.validation = {**figures, "networks": rows, "wall_s": round(time.monotonic() - started, 1)}
    table.references = {n: state.nets[n] for n in REFERENCES} | {n: state.nets[n] for n in PUBLISHED}
    table.samples = [{"piece": k, "ms": v} for k, v in state.pieces.items()]
    table.machine = {k: v for k, v in info.items() if k != "libraries"}
    table.versions = dict(info.get("libraries") or {})
    table.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return table


def profile_target(
    out: str | Path,
    settings: ProfileSettings | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> LatencyTable:
    """Profile one target and write its table to ``out``; resumes from ``out + '.partial'`` if present."""
    import time

    settings = settings or ProfileSettings()
    out = check_output_path(out, "latency table")
    started = time.monotonic()
    plan = _plan(settings)
    state = _State(out, settings)
    with _progress(progress, plan.total) as advance:

        def step(n: int) -> None:
            advance(n)
            if on_step is not None and n:
                on_step(n)

        _measure_pieces(plan, state, settings, step)
        _measure_nets(dict(plan.calibration), state, settings, step)
        _measure_nets({**plan.validation, **dict.fromkeys(REFERENCES)}, state, settings, step)
    table = _build_table(plan, state, settings, started)
    table.save(out)
    state.done()
    return table


class _progress:
    """A rich progress bar with ETA (or nothing), as a context manager yielding ``advance(n)``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("profiling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        )
        self.bar.start()
        task = self.bar.add_task("profile", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def describe_table(table: LatencyTable) -> str:
    """A readable summary of a latency table: target, machine, versions, validation and references."""
    t, v = table.target, table.validation
    lines = [
        f"target: {t.get('backend')} {t.get('precision')}, batch {t.get('batch')}, {t.get('input_size')}×"
        f"{t.get('input_size')} px, {t.get('threads')} threads, {t.get('device')}",
        f"machine: {table.machine.get('cpu', '?')}, {table.machine.get('cores', '?')} cores; created {table.created}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in sorted(table.versions.items())),
        f"samples: {len(table.samples)} pieces; calibration: scale {table.calibration.get('scale', 1):.3f}, "
        f"offset {table.calibration.get('offset_ms', 0):.2f} ms",
    ]
    if v:
        lines.append(
            f"validation on {v.get('count')} held-out networks: RMSPE {v.get('rmspe_pct', float('nan')):.1f}%, "
            f"{100 * v.get('within_10pct', 0):.0f}% within ±10%, Spearman ρ {v.get('spearman_rho', float('nan')):.3f}"
            f" (profile took {v.get('wall_s', '?')} s)"
        )
    if table.references:
        lines.append("measured: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(table.references.items())))
    return "\n".join(lines)
