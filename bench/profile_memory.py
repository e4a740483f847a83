"""``maedet-bench profile --memory T.json``: fit a table's memory model on measured networks and validate it.

``--memory-fit-nets`` networks (MAE-DET-S/M/L and random members of the space) are measured (peak RSS rise of a fresh
ONNX Runtime session and its first runs, :mod:`.memory_measure`) and the three coefficients of
:mod:`maedet.zoo.latency.memory` fitted on them; ``--networks`` further random members, never fitted on, are
measured and predicted, and their within-±10 % share and RMSPE are written with every network's figures into the
table's ``memory`` section. Each measurement is kept in ``OUT.memory-partial`` as it comes, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.memory import fit_memory_model, memory_features

from .machine import cpu_model
from .memory_measure import measure_networks
from .profile import sample_structures
from .profile_figures import validation_figures
from .profile_progress import profile_progress

__all__ = ["MEMORY_GOAL_WITHIN_10PCT", "describe_memory", "fit_table_memory", "memory_networks"]

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


def _measure_resumably(
    networks: Mapping[str, Structure], target: Mapping[str, Any], partial: Path, step: Callable[[int, str], None]
) -> dict[str, float]:
    """MiB of every network, reusing those ``partial`` holds for this target and saving each new one into it."""
    key = json.dumps({k: target.get(k) for k in ("batch", "input_size", "threads")}, sort_keys=True)
    saved: dict[str, Any] = {}
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("target") != key:
            saved = {}
    done: dict[str, float] = dict(saved.get("measured", {}))
    for name, structure in networks.items():
        ident = structure.to_json()
        if ident not in done:
            mib = measure_networks({name: structure}, target["input_size"], target["batch"], target["threads"] or 1)
            done[ident] = mib[name]
            atomic_write_text(partial, json.dumps({"target": key, "measured": done}), "memory measurements")
        step(1, name)
    return {name: done[s.to_json()] for name, s in networks.items()}


def _rows(model: Any, networks: Mapping[str, Structure], measured: Mapping[str, float], role: str) -> list[dict]:
    rows = []
    for name, s in networks.items():
        weights, activations, _ = memory_features(s, model.input_size, model.batch, model.channel_block)
        rows.append(
            {
                "name": name,
                "role": role,
                "structure": s.to_dict(),
                "weights_mib": round(float(weights), 3),
                "activations_mib": round(float(activations), 3),
                "measured_mib": round(measured[name], 3),
                "predicted_mib": round(model.predict_mib(s), 3),
            }
        )
    return rows


def fit_table_memory(
    table_path: str | Path,
    fit: int,
    validate: int,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LatencyTable:
    """Measure, fit, validate and write the table (``out``, default the table itself) with its memory section."""
    table = LatencyTable.load(table_path)
    target = table.target
    if (target.get("backend"), target.get("precision")) != ("ort-cpu", "fp32"):
        raise MaeDetError("a memory model is fitted for ONNX Runtime CPU fp32 tables only (the profiled target).")
    out_path = Path(out or table_path)
    fitted, held_out = memory_networks(table.input_size, fit, validate, seed)
    start = time.perf_counter()
    with profile_progress(progress, len(fitted) + len(held_out)) as step:
        measured = _measure_resumably(
            {**fitted, **held_out}, target, out_path.with_name(out_path.name + ".memory-partial"), step
        )
    block = int(table.model.get("channel_block", 1))
    model = fit_memory_model(list(fitted.values()), [measured[n] for n in fitted], table.batch, table.input_size, block)
    rows = _rows(model, held_out, measured, "validation")
    figures = validation_figures([r["predicted_mib"] for r in rows], [r["measured_mib"] for r in rows])
    figures |= {"wall_s": round(time.perf_counter() - start, 1), "cpu": cpu_model(), "measure": "cpu-rss-rise"}
    table.memory = model.to_dict() | {
        "validation": figures | {"meets_goal": figures["within_10pct"] >= MEMORY_GOAL_WITHIN_10PCT},
        "networks": _rows(model, fitted, measured, "fit") + rows,
    }
    table.save(out_path)
    out_path.with_name(out_path.name + ".memory-partial").unlink(missing_ok=True)
    return table


def describe_memory(table: LatencyTable) -> str:
    """The memory model's lines for ``--info`` and after a fit (empty when the table has none)."""
    if not table.memory:
        return ""
    a, b, c = table.memory["coefficients"]
    lines = [f"memory model: {a:.3f}·weights MiB + {b:.3f}·activation-peak MiB + {c:.1f} MiB (ORT CPU peak RSS)"]
    v = table.memory.get("validation") or {}
    if all(isinstance(v.get(k), (int, float)) for k in ("count", "within_10pct", "rmspe_pct", "max_abs_err_pct")):
        lines.append(
            f"memory validation on {v['count']} held-out networks: {100 * v['within_10pct']:.0f}% within ±10%, "
            f"RMSPE {v['rmspe_pct']:.1f}%, worst {v['max_abs_err_pct']:.1f}% "
            f"({v.get('wall_s', '?')} s, {v.get('cpu', '?')})"
        )
    return "\n".join(lines)
