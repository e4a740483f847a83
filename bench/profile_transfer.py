"""A latency table for a new machine, thread count, input size or batch in minutes: adapt one profiled elsewhere.

Profiling a target times hundreds of operators; a table of the same runtime and precision profiled on another
target already knows how the operators' costs relate to each other (which shapes are slow, where the channel
padding bites). What changes from one target to the next is mostly how fast each *class* of operator runs (1×1
convs, spatial convs, elementwise pool and add: compute, memory bandwidth and threading scale them differently) and
what every node and run costs outside its kernel. HELP (NeurIPS '21) and LitePred (NSDI '24) adapt a predictor to
a new device from a handful of measurements for this reason. ``maedet-bench profile --transfer FROM.json
--networks 10`` therefore times 10 networks here (random members of the space, stratified by their predicted
latency) and fits, by robust least squares (scipy, soft-L1 on relative error), one factor per operator class on
FROM's operator sums, plus the in-network calibration (a cost per convolution and an offset):

    measured ≈ Σ_class factor_class · Σ FROM's operators of that class + per_conv_ms · convolutions + offset_ms

The class factors are drawn gently towards their common value (a weak prior), so a class that is a small share of
every network cannot run off on noise. With fewer networks than the fit has unknowns twice over, one factor is
shared by every class; with fewer than four, only that factor is fitted. The new table is FROM's model with each
role's coefficients times its class factor, plain data like any table, with a record of where it came from; its
references (ResNet-50/101, MAE-DET-S/M/L) are measured here, and it is validated like any table
(:mod:`.profile_validate`).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import check_output_path, refuse_overwriting_inputs
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable, conv_count, piece_ops, structure_pieces

from .machine import cpu_model, machine_info
from .profile import ANCHOR, PUBLISHED, REFERENCES, ProfileSettings
from .profile_measure import Timing, quiet_anchor_ms, steady_ms
from .profile_validate import (
    default_plot_path,
    held_out_structures,
    measure_all,
    measurement_settings,
    profiled_networks,
    table_digest,
    validation_report,
    warn_if_missed,
    write_with_plot,
)

__all__ = [
    "CLASSES",
    "TransferFit",
    "TransferSettings",
    "adapt_table",
    "check_same_runtime",
    "class_sums",
    "fit_transfer",
    "new_target",
    "role_class",
    "transfer_table",
]

CLASSES = ("pw", "spatial", "elementwise")
TRANSFER_FORMAT = "maedet-latency-transfer-partial/1"
FIT_SEED, VALIDATION_SEED = 102, 103  # offsets of the fit and the held-out draws from --seed
PRIOR_WEIGHT = 0.01  # pull of each class factor's log towards their mean (relative-error units)
ROBUST_SCALE = 0.05  # soft-L1: residuals beyond 5% count less than squared


def role_class(role: str) -> str:
    """The operator class a role belongs to: ``pw`` (1×1 convs), ``elementwise`` (pool, add), else ``spatial``."""
    return "pw" if role == "pw" else "elementwise" if role in ("pool", "add") else "spatial"


def class_sums(table: LatencyTable, structure: Structure) -> dict[str, float]:
    """The table's uncalibrated operator ms of a structure, summed per operator class."""
    sums = dict.fromkeys(CLASSES, 0.0)
    for piece, count in structure_pieces(structure, table.input_size):
        for op in piece_ops(piece).values():
            sums[role_class(op.role)] += count * table.op_ms(op)
    return sums


@dataclass(frozen=True)
class TransferFit:
    """ms of the new target per ms of FROM's operator sum, per class; the calibration; how the fit was chosen."""

    factors: dict[str, float]
    per_conv_ms: float
    offset_ms: float
    fit_rmspe_pct: float
    tied: bool
    loo_rmspe_pct: dict[str, float]


@dataclass(frozen=True)
class _Design:
    """Per network: FROM's operator ms per class, its convolutions, its measured ms."""

    x: np.ndarray
    convs: np.ndarray
    m: np.ndarray

    def take(self, rows: np.ndarray) -> _Design:
        return _Design(self.x[rows], self.convs[rows], self.m[rows])


@dataclass(frozen=True)
class _Fitted:
    """One fitted model: a factor per class, the per-convolution cost and the offset."""

    factors: np.ndarray
    per_conv_ms: float
    offset_ms: float

    def predict(self, e: _Design) -> np.ndarray:
        return e.x @ self.factors + self.per_conv_ms * e.convs + self.offset_ms


def _solve(d: _Design, groups: np.ndarray, calibrated: bool) -> _Fitted:
    """Robust least squares on relative error; ``groups`` maps each class to the factor it shares."""
    from scipy.optimize import least_squares

    n_factors, extra = int(groups.max()) + 1, 2 if calibrated else 0
    start = float(np.log(np.median(d.m / d.x.sum(axis=1))))
    units = np.asarray([np.median(d.m / d.convs), np.median(d.m)])[:extra]  # calibration parameters near 1

    def fitted(theta: np.ndarray) -> _Fitted:
        calibration = theta[n_factors:] * units
        per_conv, offset = (float(calibration[0]), float(calibration[1])) if calibrated else (0.0, 0.0)
        return _Fitted(np.exp(theta[:n_factors])[groups], per_conv, offset)

    def residuals(theta: np.ndarray) -> np.ndarray:
        logs = theta[:n_factors]
        return np.concatenate([(fitted(theta).predict(d) - d.m) / d.m, PRIOR_WEIGHT * (logs - logs.mean())])

    x0 = np.concatenate([np.full(n_factors, start), np.zeros(extra)])
    lower, upper = (
        np.concatenate([x0[:n_factors] - 5, np.zeros(extra)]),
        np.concatenate([x0[:n_factors] + 5, np.ones(extra)]),
    )
    return fitted(least_squares(residuals, x0, bounds=(lower, upper), loss="soft_l1", f_scale=ROBUST_SCALE).x)


def _loo_rmspe(d: _Design, groups: np.ndarray, calibrated: bool) -> float:
    """Leave-one-out RMSPE: how well a model of this shape predicts a network it was not fitted on."""
    errors = []
    for i in range(len(d.m)):
        rest = np.arange(len(d.m)) != i
        pred = _solve(d.take(rest), groups, calibrated).predict(d.take(~rest))
        errors.append(float((pred[0] - d.m[i]) / d.m[i]))
    return float(100 * np.sqrt(np.mean(np.square(errors))))


def fit_transfer(source: LatencyTable, nets: Sequence[Structure], measured: Sequence[float]) -> TransferFit:
    """Class factors, per-convolution cost and offset fitted to ``measured`` steady ms of ``nets``: one factor per
    class where there are networks enough and that predicts left-out networks better, else one for all."""
    m = np.asarray(measured, dtype=np.float64)
    if len(m) != len(nets) or len(m) == 0 or not np.all(m > 0):
        raise MaeDetError("a transfer needs one positive measured time per network.")
    sums = [class_sums(source, s) for s in nets]
    classes = [c for c in CLASSES if any(row[c] > 0 for row in sums)]
    d = _Design(
        np.asarray([[row[c] for c in classes] for row in sums]),
        np.asarray([conv_count(s) for s in nets], dtype=np.float64),
        m,
    )
    calibrated = len(m) >= 4
    tied_groups, own_groups = np.zeros(len(classes), dtype=int), np.arange(len(classes))
    loo: dict[str, float] = {}
    groups = tied_groups
    if len(m) >= 2 * (len(classes) + 2) and len(classes) > 1:
        loo = {"tied": _loo_rmspe(d, tied_groups, calibrated), "per_class": _loo_rmspe(d, own_groups, calibrated)}
        groups = own_groups if loo["per_class"] < loo["tied"] else tied_groups
    fit = _solve(d, groups, calibrated)
    rmspe = float(100 * np.sqrt(np.mean(((fit.predict(d) - m) / m) ** 2)))
    factors = {c: float(fit.factors[i]) for i, c in enumerate(classes)}
    return TransferFit(factors, fit.per_conv_ms, fit.offset_ms, rmspe, groups is tied_groups, loo)


def retarget(source: LatencyTable, target: Mapping[str, Any]) -> LatencyTable:
    """FROM's model and calibration predicting for another target (input size, batch): the first guess."""
    return LatencyTable(target=dict(target), model=source.model, calibration=dict(source.calibration))


def transferred_table(source: LatencyTable, target: Mapping[str, Any], fit: TransferFit) -> LatencyTable:
    """FROM's model with each role's coefficients times its class factor, and the fitted calibration."""
    roles = {
        role: [c * fit.factors.get(role_class(role), 1.0) for c in coefs]
        for role, coefs in source.model["roles"].items()
    }
    model = {**source.model, "roles": roles}
    if source.model.get("regimes"):  # a role's models per feature size move with the role's class
        model["regimes"] = {
            key: [c * fit.factors.get(role_class(key.rpartition("@")[0]), 1.0) for c in coefs]
            for key, coefs in source.model["regimes"].items()
        }
    calibration = {"scale": 1.0, "per_conv_ms": fit.per_conv_ms, "offset_ms": fit.offset_ms}
    return LatencyTable(target=dict(target), model=model, calibration=calibration)


def adapt_table(
    source: LatencyTable,
    target: Mapping[str, Any],
    nets: Mapping[str, Structure],
    measure: Callable[[Mapping[str, Structure]], Mapping[str, float]],
) -> LatencyTable:
    """The transferred table from ``measure`` (name → steady ms here) of ``nets``; its record of where it came
    from and what it was fitted on is in ``measurement['transfer']``."""
    prior = retarget(source, target)
    measured = measure(nets)
    names = list(nets)
    fit = fit_transfer(prior, [nets[n] for n in names], [measured[n] for n in names])
    table = transferred_table(prior, target, fit)
    scale = float(source.calibration.get("scale", 1.0))
    rows = [
        {
            "name": n,
            "structure": nets[n].to_authors(),
            "measured_ms": float(measured[n]),
            "from_predicted_ms": prior.predict_ms(nets[n]),
            "fitted_ms": table.predict_ms(nets[n]),
        }
        for n in names
    ]
    record = {
        "from": {"source": Path(source.source).name, "sha256": source.identity["sha256"], "target": source.target},
        "from_machine": source.machine,
        "from_created": source.created,
        "classes": {role: role_class(role) for role in source.model["roles"]},
        "factors": fit.factors,
        "factors_vs_from": {c: f / scale for c, f in fit.factors.items()},  # relative to FROM's calibrated sum
        "tied": fit.tied,
        "leave_one_out_rmspe_pct": fit.loo_rmspe_pct,
        "fit_rmspe_pct": fit.fit_rmspe_pct,
        "networks": rows,
    }
    table.measurement = {"method": "transferred", "transfer": record}
    return table


@dataclass(frozen=True)
class TransferSettings:
    """The new target (FROM's, with its input size, batch or threads changed) and how much to measure."""

    input_size: int | None = None
    batch: int | None = None
    threads: int | None = None
    networks: int = 10
    validation_nets: int = 30
    rounds: int = 5
    seed: int = 0


def new_target(source: LatencyTable, settings: TransferSettings) -> dict[str, Any]:
    """FROM's target here: same runtime and precision, the given size, batch and threads, this machine's CPU."""
    target = dict(source.target)
    for key, value in (("input_size", settings.input_size), ("batch", settings.batch), ("threads", settings.threads)):
        if value is not None:
            target[key] = value
    if str(target.get("backend", "")).endswith("cpu"):
        target["device"] = cpu_model()
    return target


def check_same_runtime(source: LatencyTable, backend: str | None, precision: str | None, where: str) -> None:
    """A transfer keeps the runtime and the precision: anything else is a new profile, said in one sentence."""
    for what, given, stored in (
        ("runtime", backend, source.target.get("backend")),
        ("precision", precision, source.target.get("precision")),
    ):
        if given is not None and given != stored:
            raise MaeDetError(
                f"{where} is a {stored} table and a transfer keeps its {what}; profile {given} instead of transferring."
            )


def transfer_table(
    from_path: str | Path,
    out: str | Path,
    settings: TransferSettings,
    *,
    plot: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> LatencyTable:
    """Measure ``settings.networks`` networks and the references here, fit the transfer, validate it on
    ``settings.validation_nets`` fresh networks (+ S/M/L), and write the new table and its validation plot."""
    started = time.monotonic()
    source = LatencyTable.load(from_path)
    out_path = check_output_path(out, "latency table")
    plot_path = check_output_path(plot if plot is not None else default_plot_path(out_path), "plot")
    refuse_overwriting_inputs({"--transfer table": str(from_path)}, {"table": str(out_path), "plot": str(plot_path)})
    target = new_target(source, settings)
    measure_with = measurement_settings(target, settings.rounds, settings.seed)
    prior = retarget(source, target)
    seen = profiled_networks(source)
    fit_nets = held_out_structures(prior, settings.networks, settings.seed + FIT_SEED, seen, prefix="fit")
    seen |= {s.to_json() for s in fit_nets.values()}
    held_out = held_out_structures(prior, settings.validation_nets, settings.seed + VALIDATION_SEED, seen)
    units = _transfer_units(fit_nets, held_out)
    fingerprint = {"from": table_digest(source), **_fingerprint(settings), **measure_with.fingerprint()}
    stage = _stage_label(fit_nets, held_out)
    state = measure_all(out_path, measure_with, units, fingerprint, TRANSFER_FORMAT, progress, on_step, stage)
    reference = quiet_anchor_ms(state.units)
    table = adapt_table(source, target, fit_nets, lambda nets: _steady(state.units, nets, reference))
    _describe_measurement(table, measure_with, reference, source)
    table.references = _steady(state.units, [*REFERENCES, *PUBLISHED], reference)
    extra = {"requested": settings.validation_nets, "seed": settings.seed, "rounds": settings.rounds}
    table.validation = validation_report(table, held_out, state.units, extra | {"wall_s": 0.0})
    table.validation["wall_s"] = round(time.monotonic() - started, 1)
    write_with_plot(table, out_path, plot_path, f"{out_path.name} (transferred from {Path(from_path).name})")
    state.done()
    warn_if_missed(table, f"the transferred table {str(out_path)!r}")
    return table


def _transfer_units(fit: Mapping[str, Structure], held_out: Mapping[str, Structure]) -> dict[str, Structure | str]:
    units: dict[str, Structure | str] = {**fit, **{n: builtin_structure(n) for n in PUBLISHED}}
    return units | {name: name for name in REFERENCES} | dict(held_out)


def _fingerprint(settings: TransferSettings) -> dict[str, Any]:
    return {"networks": settings.networks, "validation_nets": settings.validation_nets}


def _steady(units: Mapping[str, Timing], names: Any, reference: float) -> dict[str, float]:
    return {n: steady_ms(units[n].times, units[n].anchor, reference) for n in names}


def _describe_measurement(
    table: LatencyTable, settings: ProfileSettings, reference: float, source: LatencyTable
) -> None:
    """The anchor, rounds and seed like a profile's measurement, beside the transfer record; machine, versions."""
    anchor = {"network": ANCHOR, "input_size": max(32, settings.input_size // 2), "quiet_ms": reference}
    table.measurement |= {"rounds": settings.rounds, "anchor": anchor, "seed": settings.seed, "samples": 0}
    info = machine_info(settings.thread_count)
    table.machine = {k: v for k, v in info.items() if k != "libraries"}
    table.versions = dict(info.get("libraries") or {})
    table.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    table.source = str(source.source)


def _stage_label(fit: Mapping[str, Structure], held_out: Mapping[str, Structure]) -> Callable[[str], str]:
    def stage(name: str) -> str:
        if name in fit:
            return "transfer"
        return "held-out" if name in held_out else "published" if name in PUBLISHED else "reference"

    return stage
