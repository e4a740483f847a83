"""``maedet-bench profile --memory T.json``: fit a table's memory model on measured networks and validate it.

``--memory-fit-nets`` networks (MAE-DET-S/M/L and random members of the space) are measured (peak RSS rise of a fresh
ONNX Runtime session's creation and of its first runs, :mod:`.memory_measure`) and the two phases of
:mod:`maedet.zoo.latency.memory` fitted on them; ``--networks`` further random members, never fitted on, are
measured and predicted (the larger phase against the measured peak), and their within-±10 % share and RMSPE are
written with every network's figures into the table's ``memory`` section. Each measurement is kept in
``OUT.memory-partial`` as it comes, so an interrupted run resumes where it stopped. With ``mmap_threshold`` the
networks are measured with that fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``) and the section says so: its
predictions are for processes started with the same setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.memory import (
    MIN_FIT_NETWORKS,
    MMAP_THRESHOLD_ENV,
    PHASE_FEATURES,
    MemoryModel,
    fit_memory_model,
)

from .machine import cpu_model
from .memory_measure import PHASES, child_environment, measure_networks
from .profile import sample_structures
from .profile_figures import validation_figures
from .profile_progress import profile_progress

__all__ = [
    "MEMORY_GOAL_WITHIN_10PCT",
    "describe_memory",
    "fit_table_memory",
    "measure_resumably",
    "measure_settings",
    "memory_networks",
    "memory_rows",
    "open_table_to_fit",
    "validated_section",
]

MEMORY_GOAL_WITHIN_10PCT = 1.0  # the goal: every validation network within ±10 %
FIT_SEED, VALIDATION_SEED = 211, 307  # apart from the latency profile's and validation's streams
PUBLISHED_FIT = ("maedet_s", "maedet_m", "maedet_l")


def memory_networks(input_size: int, fit: int, validate: int, seed: int) -> tuple[dict[str, Structure], ...]:
    """The fit networks (the published three first) and distinct validation networks none of them repeats."""
    fitted = {n: builtin_structure(n) for n in PUBLISHED_FIT[:fit]}
    for i, s in enumerate(sample_structures(max(0, fit - len(fitted)), seed + FIT_SEED, input_size)):
        fitted[f"fit{i}"] = s
    seen = {s.to_json() for s in fitted.values()}
    pool = [s for s in sample_structures(validate + 20, seed + VALIDATION_SEED, input_size) if s.to_json() not in seen]
    if len(pool) < validate:
        raise MaeDetError(f"could not draw {validate} distinct validation networks; ask for fewer.")
    return fitted, {f"mem{i}": s for i, s in enumerate(pool[:validate])}


def measure_resumably(
    items: Mapping[str, tuple[str, Callable[[], dict[str, float]]]],
    settings: Mapping[str, Any],
    partial: Path,
    step: Callable[[int, str], None],
) -> dict[str, dict[str, float]]:
    """MiB (PHASES) of every named item, each ``(identity, measure)``: those ``partial`` holds for the same
    ``settings`` (target, allocator, what is measured) are reused, every new one is measured and saved at once."""
    key = json.dumps(dict(settings) | {"phases": PHASES}, sort_keys=True)
    saved: dict[str, Any] = {}
    if partial.exists():
        saved = _read_partial(partial)
        if saved.get("target") != key:
            saved = {}
    done: dict[str, dict[str, float]] = dict(saved.get("measured", {}))
    for name, (ident, measure) in items.items():
        if ident not in done:
            done[ident] = measure()
            atomic_write_text(partial, json.dumps({"target": key, "measured": done}), "memory measurements")
        step(1, name)
    return {name: done[ident] for name, (ident, _) in items.items()}


def measure_settings(target: Mapping[str, Any], mmap_threshold: int | None) -> dict[str, Any]:
    """What a partial file's measurements depend on: the table's batch, size and threads, and the allocator."""
    settings = {k: target.get(k) for k in ("batch", "input_size", "threads")}
    return settings | ({} if mmap_threshold is None else {"malloc_mmap_threshold": mmap_threshold})


def _measure_networks_resumably(
    networks: Mapping[str, Structure],
    target: Mapping[str, Any],
    partial: Path,
    step: Callable[[int, str], None],
    mmap_threshold: int | None,
) -> dict[str, dict[str, float]]:
    def measure(name: str, structure: Structure) -> Callable[[], dict[str, float]]:
        return lambda: measure_networks(
            {name: structure}, target["input_size"], target["batch"], target["threads"] or 1,
            mmap_threshold=mmap_threshold,
        )[name]  # fmt: skip

    items = {name: (s.to_json(), measure(name, s)) for name, s in networks.items()}
    return measure_resumably(items, measure_settings(target, mmap_threshold), partial, step)


def _read_partial(partial: Path) -> dict[str, Any]:
    """The saved measurements, or nothing when the file is not what this code writes (a fresh start, not an error:
    the partial file is our own scratch)."""
    try:
        saved = json.loads(partial.read_text())
    except (OSError, ValueError):
        return {}
    measured = saved.get("measured") if isinstance(saved, dict) else None
    if not isinstance(measured, dict) or not all(
        isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and v[k] > 0 for k in PHASES)
        for v in measured.values()
    ):
        return {}
    return saved


def memory_rows(
    entries: Mapping[str, tuple[MemoryModel, Structure]],
    measured: Mapping[str, Mapping[str, float]],
    role: str,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict]:
    """One row per network for the table: its features, measured and predicted MiB, per phase and peak; each
    predicted by its own model (a detector's carries its own head)."""
    rows = []
    for name, (model, s) in entries.items():
        features = model.features(s)
        phases = model.phase_mib(s)
        rows.append(
            {
                "name": name,
                "role": role,
                "structure": s.to_dict(),
                **(extra or {}).get(name, {}),
                **{f: round(v, 3) for f, v in features.items() if f != "overhead"},
                "measured_mib": round(measured[name]["peak"], 3),
                "predicted_mib": round(max(phases.values()), 3),
                **{f"measured_{p}_mib": round(measured[name][p], 3) for p in phases},
                **{f"predicted_{p}_mib": round(v, 3) for p, v in phases.items()},
            }
        )
    return rows


def validated_section(
    model: MemoryModel, fit_rows: list[dict], rows: list[dict], wall_s: float, what: str
) -> dict[str, Any]:
    """The model as the table stores it, with the held-out rows' figures and every row."""
    figures = validation_figures([r["predicted_mib"] for r in rows], [r["measured_mib"] for r in rows])
    if math.isnan(figures["spearman_rho"]):  # undefined for fewer than three networks; JSON has no NaN
        figures["spearman_rho"] = None
    figures |= {"wall_s": round(wall_s, 1), "cpu": cpu_model(), "measure": "cpu-rss-rise", "kind": what}
    return model.to_dict() | {
        "validation": figures | {"meets_goal": figures["within_10pct"] >= MEMORY_GOAL_WITHIN_10PCT},
        "networks": fit_rows + rows,
    }


def open_table_to_fit(table_path: str | Path, fit: int, mmap_threshold: int | None, what: str) -> LatencyTable:
    """The table a memory model is fitted into, once what would make the fit fail is ruled out in one sentence
    (before anything is measured): its target, the number of fit networks, the mmap threshold."""
    table = LatencyTable.load(table_path)
    if (table.target.get("backend"), table.target.get("precision")) != ("ort-cpu", "fp32"):
        raise MaeDetError("a memory model is fitted for ONNX Runtime CPU fp32 tables only (the profiled target).")
    if fit < MIN_FIT_NETWORKS:
        raise MaeDetError(
            f"a memory model is fitted on at least {MIN_FIT_NETWORKS} {what}; ask --memory-fit-nets for that many."
        )
    child_environment(mmap_threshold)
    return table


def fit_table_memory(
    table_path: str | Path,
    fit: int,
    validate: int,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    mmap_threshold: int | None = None,
) -> LatencyTable:
    """Measure, fit, validate and write the table (``out``, default the table itself) with its memory section;
    ``mmap_threshold`` (bytes) measures with that fixed glibc mmap threshold instead of glibc's dynamic one."""
    table = open_table_to_fit(table_path, fit, mmap_threshold, "networks")
    target = table.target
    out_path = Path(out or table_path)
    fitted, held_out = memory_networks(table.input_size, fit, validate, seed)
    start = time.perf_counter()
    with profile_progress(progress, len(fitted) + len(held_out)) as step:
        measured = _measure_networks_resumably(
            {**fitted, **held_out}, target, out_path.with_name(out_path.name + ".memory-partial"), step, mmap_threshold
        )
    block = int(table.model.get("channel_block", 1))
    by_phase = {p: [measured[n][p] for n in fitted] for p in PHASE_FEATURES}
    model = fit_memory_model(list(fitted.values()), by_phase, table.batch, table.input_size, block)
    model = dataclasses.replace(model, malloc_mmap_threshold=mmap_threshold)
    wall_s = time.perf_counter() - start
    fit_rows = memory_rows({n: (model, s) for n, s in fitted.items()}, measured, "fit")
    rows = memory_rows({n: (model, s) for n, s in held_out.items()}, measured, "validation")
    detector = (table.memory or {}).get("detector")  # its own measurements: kept when the backbone is refitted
    table.memory = validated_section(model, fit_rows, rows, wall_s, "backbones")
    table.memory |= {"detector": detector} if detector else {}
    table.save(out_path)
    out_path.with_name(out_path.name + ".memory-partial").unlink(missing_ok=True)
    return table


def describe_memory(table: LatencyTable) -> str:
    """The memory models' lines for ``--info`` and after a fit (empty when the table has none)."""
    if not table.memory:
        return ""
    model = MemoryModel.from_section(table.memory, table.batch, table.input_size, "the table")
    lines = _describe_model(model, table.memory, "memory model (ORT CPU peak RSS, MiB)", "networks")
    detector = table.memory.get("detector")
    if detector:
        from maedet.zoo.latency.detector_memory import DetectorMemoryModel

        dm = DetectorMemoryModel.from_detector_section(detector, table.batch, table.input_size, "the table")
        parts = f"backbone + FPN {dm.head.fpn_channels} + GFocalV2 head + NMS"
        title = f"detector memory model ({parts}, ORT CPU peak RSS, MiB)"
        lines += _describe_model(dm, detector, title, "detectors")
    return "\n".join(lines)


def _describe_model(model: MemoryModel, section: Mapping[str, Any], title: str, what: str) -> list[str]:
    lines = [f"{title}: the larger of"]
    for name, phase in model.phases.items():
        terms = " + ".join(
            f"{c:.1f}" if f == "overhead" else f"{c:.3f}·{f.removesuffix('_mib')}"
            for f, c in zip(phase.features, phase.coefficients, strict=True)
        )
        lines.append(f"  {name}: {terms}")
    if model.malloc_mmap_threshold is not None:
        lines.append(
            f"  measured with {MMAP_THRESHOLD_ENV}={model.malloc_mmap_threshold} (glibc): it predicts processes "
            "started with the same setting"
        )
    v = section.get("validation") or {}
    if all(isinstance(v.get(k), (int, float)) for k in ("count", "within_10pct", "rmspe_pct", "max_abs_err_pct")):
        lines.append(
            f"memory validation on {v['count']} held-out {what}: {100 * v['within_10pct']:.0f}% within ±10%, "
            f"RMSPE {v['rmspe_pct']:.1f}%, worst {v['max_abs_err_pct']:.1f}% "
            f"({v.get('wall_s', '?')} s, {v.get('cpu', '?')})"
        )
    return lines
