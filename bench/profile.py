"""Profile a latency target: time the operators of the search space in the real runtime, fit, calibrate, validate.

``profile_target`` measures, on this machine and runtime, what backbones of the search space are made of. On ONNX
Runtime CPU it times whole random networks of the space with the runtime's own profiler on and attributes every
kernel to the block operator it computes (so each conv is timed fused and laid out as the runtime runs it inside a
network); on GPU runtimes it times the pieces (stem, first block, repeated block) on their own. Every unit is timed
beside a fixed anchor network to cancel the machine's slow phases (:mod:`.profile_measure`). It fits the
per-operator model of :mod:`maedet.zoo.latency`, calibrates its sum on a few whole networks, proves the prediction on
networks it never saw (random members of the search space from small to large, plus MAE-DET-S/M/L), and stores
ResNet-50/101's measured latencies so budgets can be given relative to them. Every measured unit is saved at once,
so an interrupted profile resumes where it stopped. docs/latency.md explains the choices.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import check_output_path
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable, Op, Piece, conv_count, piece_ops, structure_pieces
from maedet.zoo.latency.goal import goal_text, meets_goal, missed_goal_sentence

from .machine import cpu_model, machine_info, usable_cores
from .profile_figures import validation_figures, validation_section
from .profile_fit import fit_op_model
from .profile_measure import ANCHOR, Measurer, quiet_anchor_ms, steady_ms, structure_op_keys
from .profile_progress import profile_progress
from .profile_state import MeasuredUnits

__all__ = ["ProfileSettings", "describe_table", "profile_target", "sample_structures", "validation_figures"]

LOG = logging.getLogger(__name__)
BACKENDS = ("ort-cpu", "ov-cpu", "ort-cuda", "ort-trt")
CPU_BACKENDS = ("ort-cpu", "ov-cpu")  # operators timed inside networks by the runtime's own per-node counters
PRECISIONS = ("fp32", "int8")
REFERENCES = ("resnet50", "resnet101")
PUBLISHED = ("maedet_s", "maedet_m", "maedet_l")
PIECE_GROUP = 8  # pieces timed together in interleaved rounds (GPU runtimes)
PARTIAL_FORMAT = "maedet-latency-profile-partial/2"
# Why a CPU profile runs one thread unless --threads says otherwise (measured; docs/latency.md has the figures).
DEFAULT_CPU_THREADS_WHY = (
    "profiling with 1 thread, the setting whose predictions meet the ±10% goal: with every core busy, whatever else "
    "runs preempts the runtime's threads, the same network's time varies by up to 2× and the operator model missed "
    "the goal (measured at 320 px with 2 threads on 2 cores); pass --threads N to profile N threads anyway"
)


@dataclass(frozen=True)
class ProfileSettings:
    """What to profile and how much. The defaults fit one CPU target at 640×640 in about 10 minutes on 2 cores.

    ``train_nets``: networks whose operators are timed (ONNX Runtime CPU); ``pieces``: pieces timed on their own
    (GPU runtimes); ``calibration_nets``: networks that calibrate the sum; ``validation_nets``: held-out networks.
    """

    backend: str = "ort-cpu"
    precision: str = "fp32"
    input_size: int = 640
    batch: int = 1
    threads: int | None = None
    train_nets: int = 24
    pieces: int = 160
    calibration_nets: int = 12
    validation_nets: int = 30
    rounds: int = 5
    seed: int = 0
    opset: int = 18

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MaeDetError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}.")
        if self.precision not in PRECISIONS:
            raise MaeDetError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        if self.backend not in CPU_BACKENDS and self.precision == "int8":
            raise MaeDetError("INT8 profiles use the exporter's CPU layout: profile them on ort-cpu or ov-cpu.")
        limits = {"input_size": (32, 2048), "batch": (1, 256), "train_nets": (1, 500), "pieces": (8, 5000)}
        limits |= {"rounds": (1, 100), "calibration_nets": (1, 100), "validation_nets": (1, 500)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise MaeDetError(f"profile setting {name} must be between {lo} and {hi}, got {value}.")
        if self.threads is not None and not 1 <= self.threads <= 4 * usable_cores():
            raise MaeDetError(f"threads must be between 1 and {4 * usable_cores()}, got {self.threads}.")

    @property
    def thread_count(self) -> int:
        """``threads``, or by default 1 on ONNX Runtime CPU (see :data:`DEFAULT_CPU_THREADS_WHY`) and the usable
        cores for the GPU runtimes' host side."""
        if self.threads is not None:
            return self.threads
        return 1 if self.in_network else usable_cores()

    @property
    def in_network(self) -> bool:
        """Operators timed inside networks by the runtime's profiler (CPU), or pieces on their own (GPU)."""
        return self.backend in CPU_BACKENDS

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


@dataclass
class _Plan:
    train: dict[str, Structure]
    pieces: list[Piece]
    calibration: dict[str, Structure]
    validation: dict[str, Structure]

    @property
    def total(self) -> int:
        units = len(self.train) + math.ceil(len(self.pieces) / PIECE_GROUP)
        return units + len(self.calibration) + len(self.validation) + len(REFERENCES)


def _plan(settings: ProfileSettings) -> _Plan:
    """Training, calibration and validation networks are disjoint draws (different seeds, duplicates removed)."""
    held_out = sample_structures(
        settings.calibration_nets + settings.validation_nets, settings.seed + 3, settings.input_size
    )
    calibration = {f"cal{i}": s for i, s in enumerate(held_out[: settings.calibration_nets])}
    validation = {f"val{i}": s for i, s in enumerate(held_out[settings.calibration_nets :])}
    validation |= {name: builtin_structure(name) for name in PUBLISHED}
    train: dict[str, Structure] = {}
    pieces: list[Piece] = []
    if settings.in_network:
        unseen = {s.to_json() for s in validation.values()} | {s.to_json() for s in calibration.values()}
        drawn = sample_structures(settings.train_nets + len(unseen), settings.seed + 2, settings.input_size)
        train = {f"train{i}": s for i, s in enumerate([s for s in drawn if s.to_json() not in unseen])}
        train = dict(list(train.items())[: settings.train_nets])
    else:
        pieces = plan_pieces(settings)
    return _Plan(train, pieces, calibration, validation)


# ------------------------------------------------------------------------------------------- resumable state
def _State(out: Path, settings: ProfileSettings) -> MeasuredUnits:
    """The profile's measurements so far (``OUT.partial``), for these settings."""
    return MeasuredUnits(out, settings.fingerprint(), PARTIAL_FORMAT)


def _measure(plan: _Plan, state: MeasuredUnits, measurer: Measurer, step: Callable[[int, str], None]) -> None:
    """Every unit not yet in the state, in plan order; the state is saved after each."""
    done = sum(1 for name in [*plan.train, *plan.calibration, *plan.validation, *REFERENCES] if name in state.units)
    todo_pieces = [p for p in plan.pieces if p.key() not in state.units]
    done += math.ceil(len(plan.pieces) / PIECE_GROUP) - math.ceil(len(todo_pieces) / PIECE_GROUP)
    step(done, "already measured (resumed)")
    for name, structure in plan.train.items():
        if name not in state.units:
            state.units[name] = measurer.network(structure, profiled=True)
            state.save()
            step(1, f"training network {name} (operators)")
    for start in range(0, len(todo_pieces), PIECE_GROUP):
        state.units |= measurer.pieces(todo_pieces[start : start + PIECE_GROUP])
        state.save()
        step(1, f"pieces {start + 1}-{min(start + PIECE_GROUP, len(todo_pieces))} of {len(todo_pieces)}")
    stages = {**dict.fromkeys(plan.calibration, "calibration"), **dict.fromkeys(plan.validation, "validation")}
    plain: dict[str, Structure | str] = {**plan.calibration, **plan.validation, **{r: r for r in REFERENCES}}
    for name, structure in plain.items():
        if name not in state.units:
            state.units[name] = measurer.network(structure)
            state.save()
            step(1, f"{stages.get(name, 'reference')} network {name}")


# ------------------------------------------------------------------------------------------- fitting
def _samples(plan: _Plan, state: MeasuredUnits, settings: ProfileSettings, ref: float) -> list[tuple[list[Op], float]]:
    """Timed samples for the fit: each operator of each training network (median over the identical ones of one
    network), or each piece on its own; all in steady ms (anchor-scaled)."""
    samples: list[tuple[list[Op], float]] = []
    for name, structure in plan.train.items():
        timing = state.units[name]
        ops = structure_op_keys(structure, settings.input_size)
        by_op: dict[Op, list[float]] = {}
        for key, per_round in timing.ops.items():
            if key in ops:
                by_op.setdefault(ops[key], []).append(steady_ms(per_round, timing.anchor, ref))
        samples += [([op], float(np.median(ms))) for op, ms in by_op.items()]
    for piece in plan.pieces:
        timing = state.units[piece.key()]
        samples.append((list(piece_ops(piece).values()), steady_ms(timing.times, timing.anchor, ref)))
    return samples


CALIBRATION_ROBUST_SCALE = 0.03  # soft-L1: a network further than 3% off counts less than squared


def _calibration(table: LatencyTable, nets: Sequence[Structure], measured: Sequence[float]) -> dict[str, float]:
    """measured ≈ scale · Σ operators + per_conv_ms · convolutions + offset_ms, non-negative and fitted on relative
    error with a soft-L1 loss (scipy's least_squares), so a network measured in a slow or fast phase the anchor did
    not fully correct (measured here: 2 of 12 networks 6% and 10% off the rest) does not drag every prediction.
    The scale covers the time outside the attributed kernels that grows with them (the outputs' reorders); the
    per-convolution cost what every node pays outside its kernel (with several threads, the thread pool's
    hand-over per node: measured at 320 px, 2 threads, the kernels were a quarter of a run); the offset the run
    call. With fewer than four networks only the scale is fitted."""
    from scipy.optimize import least_squares, nnls

    sums = np.asarray([table.raw_sum_ms(s) for s in nets])
    m = np.asarray(measured)
    if len(m) < 4:
        return {"scale": float(np.sum(sums / m) / np.sum((sums / m) ** 2)), "per_conv_ms": 0.0, "offset_ms": 0.0}
    features = np.stack([sums, [float(conv_count(s)) for s in nets], np.ones_like(m)], axis=1)
    norm = features.max(axis=0)
    x = features / norm / m[:, None]  # columns of unit magnitude, rows relative to the measurement
    start, _ = nnls(x, np.ones_like(m))
    fit = least_squares(
        lambda coef: x @ coef - 1.0,
        np.maximum(start, 1e-9),
        bounds=(0.0, np.inf),
        loss="soft_l1",
        f_scale=CALIBRATION_ROBUST_SCALE,
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
    )
    scale, per_conv, offset = (fit.x / norm).tolist()
    return {"scale": scale, "per_conv_ms": per_conv, "offset_ms": offset}


def _target(settings: ProfileSettings, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": settings.backend,
        "precision": settings.precision,
        "batch": settings.batch,
        "input_size": settings.input_size,
        "threads": settings.thread_count,
        "device": cpu_model() if settings.backend in CPU_BACKENDS else str((info.get("gpu") or {}).get("name")),
    }


def _build_table(plan: _Plan, state: MeasuredUnits, settings: ProfileSettings, wall_s: float) -> LatencyTable:
    units = state.units
    ref = quiet_anchor_ms(units)

    def steady(name: str) -> float:
        return steady_ms(units[name].times, units[name].anchor, ref)

    samples = _samples(plan, state, settings, ref)
    info = machine_info(settings.thread_count)
    table = LatencyTable(target=_target(settings, info), model=fit_op_model(samples, settings.batch, regimes=True))
    # The training networks' own end-to-end times calibrate too (timed with the runtime's profiler on, whose cost is
    # per node and small against a network's run). Measured at 640 px on 203 held-out networks: 36 networks instead
    # of 12 took the mean error from +2.8% to +0.9% and the share within ±5% from 67% to 79%.
    calibrating = {**plan.calibration, **plan.train}
    table.calibration = _calibration(table, list(calibrating.values()), [steady(n) for n in calibrating])
    rows = [
        {
            "name": n,
            "structure": s.to_authors(),
            "measured_ms": steady(n),
            "measured_raw_ms": float(np.median(units[n].times)),
            "predicted_ms": table.predict_ms(s),
        }
        for n, s in plan.validation.items()
    ]
    table.validation = validation_section(rows) | {"wall_s": round(wall_s, 1)}
    table.references = {n: steady(n) for n in (*REFERENCES, *PUBLISHED)}
    table.measurement = _measurement(settings, ref, len(samples))
    table.samples = [_sample_row(ops, ms) for ops, ms in samples]
    table.machine = {k: v for k, v in info.items() if k != "libraries"}
    table.versions = dict(info.get("libraries") or {})
    table.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return table


def _measurement(settings: ProfileSettings, ref: float, count: int) -> dict[str, Any]:
    method = "operators inside networks (runtime profiler)" if settings.in_network else "pieces on their own"
    return {
        "method": method,
        "rounds": settings.rounds,
        "train_nets": settings.train_nets if settings.in_network else 0,
        "pieces": 0 if settings.in_network else settings.pieces,
        "samples": count,
        "anchor": {"network": ANCHOR, "input_size": max(32, settings.input_size // 2), "quiet_ms": ref},
        "seed": settings.seed,
    }


def _sample_row(ops: Sequence[Op], ms: float) -> dict[str, Any]:
    fields = ("role", "in_chs", "out_chs", "kernel_size", "stride", "size")
    return {"ops": [[getattr(op, f) for f in fields] for op in ops], "ms": ms}


# ------------------------------------------------------------------------------------------- the profile
def profile_target(
    out: str | Path,
    settings: ProfileSettings | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> LatencyTable:
    """Profile one target and write its table to ``out``; resumes from ``out + '.partial'`` if present."""
    settings = settings or ProfileSettings()
    out = check_output_path(out, "latency table")
    if settings.in_network and settings.threads is None and usable_cores() > 1:
        LOG.info("%s.", DEFAULT_CPU_THREADS_WHY)
    started = time.monotonic()
    plan = _plan(settings)
    state = _State(out, settings)
    shown = profile_progress(progress, plan.total)
    with tempfile.TemporaryDirectory(prefix="maedet-profile-") as tmp, shown as advance:

        def step(n: int, label: str) -> None:
            advance(n, label)
            if on_step is not None and n:
                on_step(n)

        _measure(plan, state, Measurer(settings, tmp), step)
    table = _build_table(plan, state, settings, time.monotonic() - started)
    table.save(out)
    state.done()
    if table.validation.get("meets_goal") is False:
        LOG.warning("%s", missed_goal_sentence(f"the profile {str(out)!r}", table.target, table.validation))
    return table


def describe_table(table: LatencyTable) -> str:
    """A readable summary of a latency table: target, machine, versions, validation and references."""
    t, v, m = table.target, table.validation, table.measurement
    lines = [
        f"target: {t.get('backend')} {t.get('precision')}, batch {t.get('batch')}, {t.get('input_size')}×"
        f"{t.get('input_size')} px, {t.get('threads')} threads, {t.get('device')}",
        f"machine: {table.machine.get('cpu', '?')}, {table.machine.get('cores', '?')} cores; created {table.created}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in sorted(table.versions.items())),
        f"measured: {m.get('method', '?')}, {m.get('samples', len(table.samples))} samples, "
        f"{m.get('rounds', '?')} rounds; model: {', '.join(sorted(table.model.get('roles', {})))}, "
        f"channel block {table.model.get('channel_block')}{_regimes_text(table.model)}, calibration: "
        f"{_calibration_text(table.calibration)}",
    ]
    if v:
        lines.append(
            f"validation on {v.get('count')} held-out networks: RMSPE {v.get('rmspe_pct', float('nan')):.1f}%, "
            f"{_within_text(v)}, Spearman ρ {v.get('spearman_rho', float('nan')):.3f} "
            f"({'validation' if 'requested' in v else 'profile'} took {v.get('wall_s', '?')} s)"
        )
        lines.append(_goal_line(v))
        raw = v.get("unscaled") or {}
        if raw:
            lines.append(
                f"  against unscaled medians (no anchor): RMSPE {raw.get('rmspe_pct', float('nan')):.1f}%, "
                f"{_within_text(raw)}, ρ {raw.get('spearman_rho', float('nan')):.3f}"
            )
    transfer = m.get("transfer")
    if isinstance(transfer, dict):
        factors = ", ".join(f"{c} ×{f:.3f}" for c, f in (transfer.get("factors_vs_from") or {}).items())
        lines.append(
            f"transferred from {transfer.get('from', {}).get('source')} ({len(transfer.get('networks', []))} "
            f"networks timed here): {factors} against its calibrated operators"
        )
    if table.references:
        lines.append("measured: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(table.references.items())))
    return "\n".join(lines + _detector_lines(table.detector))


def _detector_lines(section: dict[str, Any]) -> list[str]:
    """What the detector section holds: the head it prices, its calibration, validation and measured detectors."""
    if not section:
        return ["detector: none (backbones only; maedet-bench profile --detector adds the FPN, head and NMS)"]
    head, v = section.get("head", {}), section.get("validation") or {}
    lines = [
        f"detector: FPN {head.get('fpn_channels')} + GFocalV2 head ({head.get('stacked_convs')} stacked convs) + "
        f"decode and NMS; roles {', '.join(sorted(section.get('roles', {})))}, neck and head scale "
        f"{section.get('calibration', {}).get('scale', 1.0):.3f}"
    ]
    if v:
        lines.append(
            f"  validation on {v.get('count')} whole detectors: RMSPE {v.get('rmspe_pct', float('nan')):.1f}%, "
            f"{_within_text(v)}, Spearman ρ {v.get('spearman_rho', float('nan')):.3f}"
        )
    refs = section.get("references") or {}
    if refs:
        lines.append("  measured: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in sorted(refs.items())))
    return lines


def _within_text(figures: dict[str, Any]) -> str:
    """The shares within ±10% and, where recorded (not in older tables), within ±5%."""
    text = f"{100 * figures.get('within_10pct', 0):.0f}% within ±10%"
    five = figures.get("within_5pct")
    return text if five is None else f"{100 * five:.0f}% within ±5%, {text}"


def _goal_line(validation: dict[str, Any]) -> str:
    """The goal and the verdict: met, missed, or unknown (an older table without the verdict or figures)."""
    met = meets_goal(validation)
    word = {True: "met", False: "MISSED", None: "unknown"}[met]
    recorded = "" if isinstance(validation.get("meets_goal"), bool) else " (not recorded: judged from the figures)"
    if met is None:
        recorded = " (the table records neither the verdict nor the figures)"
    return f"  validation goal ({goal_text()}): {word}{recorded}"


def _regimes_text(model: dict[str, Any]) -> str:
    regimes = model.get("regimes") or {}
    return f", {len(regimes)} per-size models ({', '.join(regimes)})" if regimes else ""


def _calibration_text(calibration: dict[str, float]) -> str:
    scale, per_conv = calibration.get("scale", 1.0), calibration.get("per_conv_ms", 0.0)
    return f"scale {scale:.3f} + {per_conv:.3f} ms per convolution + {calibration.get('offset_ms', 0.0):.2f} ms"
