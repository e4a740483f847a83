"""Fronts for several devices at once: one sweep per latency table, and how each target's picks do on the others.

A backbone that is fast on one device need not be on another (a CPU pays for MACs, a GPU for layers and memory
traffic), so ``maedet-search pareto --latency-table a.json --latency-table b.json`` writes one front per target
and prices every point of every front on every other target. Each target gets its own sweep: a point of a front is
the best backbone under *that target's* latency budget, which no search for another budget can stand in for. The
sweeps are short and stochastic, so ``targets.json`` pools them: a target's front there is the non-dominated set,
under its own table, of every backbone any sweep found (each row says which sweep found it).
Files are named by each table's stem (``pareto-a.json``); two tables with the same stem are told apart by their
folders, then by a number. ``targets.json`` holds the cross-prices and ``targets.png`` shows them: one panel per
target, every target's front priced on it.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maedet.fileio import write_all_or_none

from .evolution import Search
from .latency import LatencyTarget
from .pareto import ParetoSettings, pareto_png, run_pareto

__all__ = [
    "TARGETS_FORMAT",
    "cross_prices",
    "run_pareto_targets",
    "target_names",
    "targets_file_names",
    "targets_png",
    "write_pareto_targets",
]

TARGETS_FORMAT = "maedet-pareto-targets/1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def target_names(tables: Sequence[str]) -> list[str]:
    """A short file-safe name per table: its stem; where stems clash, folder-stem; then a number."""

    def safe(text: str) -> str:
        return _UNSAFE.sub("_", text).strip("._") or "table"

    stems = [safe(Path(t).stem) for t in tables]
    names = [
        safe(f"{Path(t).resolve().parent.name}-{Path(t).stem}") if stems.count(stem) > 1 else stem
        for t, stem in zip(tables, stems, strict=True)
    ]
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        if names.count(name) > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}-{seen[name]}"
        numbered.append(name)
    return numbered


def targets_file_names(names: Sequence[str]) -> list[str]:
    """Every file a multi-target sweep writes: a front and its plot per target, the cross-prices and their plot."""
    return [f"pareto-{n}.{ext}" for n in names for ext in ("json", "png")] + ["targets.json", "targets.png"]


def _pooled_front(results: dict[str, dict[str, Any]], target: LatencyTarget) -> list[dict[str, Any]]:
    """The non-dominated points, priced on ``target``, among every point every sweep found (each sweep is short
    and stochastic, so another target's sweep may have found a backbone that is better here too)."""
    from maedet.zoo import Structure

    pool: dict[str, dict[str, Any]] = {}
    for searched_for, result in results.items():
        for point in result["points"]:
            key = json.dumps(point["structure"], sort_keys=True)
            if key not in pool:
                ms = target.predict_ms(Structure.from_dict(point["structure"]))
                if math.isfinite(ms):
                    pool[key] = {"score": point["score"], "ms": ms, "searched_for": searched_for, **point}
    front, best = [], -math.inf
    for row in sorted(pool.values(), key=lambda r: (r["ms"], -r["score"])):
        if row["score"] > best:
            front.append(row)
            best = row["score"]
    return front


def cross_prices(results: dict[str, dict[str, Any]], targets: dict[str, LatencyTarget]) -> dict[str, Any]:
    """Per target, its front over every sweep's points (non-dominated under its own table), each point priced on
    every target (ms per batch; None where a target has no figure)."""
    from maedet.zoo import Structure

    fronts: dict[str, list[dict[str, Any]]] = {}
    for name, target in targets.items():
        rows = []
        for point in _pooled_front(results, target):
            structure = Structure.from_dict(point["structure"])
            prices = {other: t.predict_ms(structure) for other, t in targets.items()}
            rows.append(
                {
                    "score": point["score"],
                    "searched_for": point["searched_for"],
                    "predicted_ms": {k: (v if math.isfinite(v) else None) for k, v in prices.items()},
                    "structure": point["structure"],
                }
            )
        fronts[name] = rows
    labels = {name: {"label": t.label, "target": dict(t.predictor.target)} for name, t in targets.items()}
    return {"format": TARGETS_FORMAT, "targets": labels, "fronts": fronts}


def run_pareto_targets(
    targets: dict[str, LatencyTarget],
    settings: ParetoSettings,
    progress: Callable[[str, int, Search], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One sweep per target (name → pareto.json object), then the cross-prices of every front."""
    results = {}
    for name, target in targets.items():
        step = None if progress is None else (lambda i, s, n=name: progress(n, i, s))
        results[name] = run_pareto(target, settings, progress=step)
    return results, cross_prices(results, targets)


def write_pareto_targets(results: dict[str, dict[str, Any]], cross: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Every target's pareto-NAME.json/png, targets.json and targets.png in ``out_dir``: all or none."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, result in results.items():
        files[f"pareto-{name}.json"] = (json.dumps(result, indent=1, allow_nan=False) + "\n").encode()
        files[f"pareto-{name}.png"] = pareto_png(result)
    files["targets.json"] = (json.dumps(cross, indent=1, allow_nan=False) + "\n").encode()
    files["targets.png"] = targets_png(cross)
    writers = [(out / n, lambda tmp, data=data: tmp.write_bytes(data)) for n, data in files.items()]
    write_all_or_none(writers)
    return [out / n for n in files]


def targets_png(cross: dict[str, Any]) -> bytes:
    """One panel per target: score against predicted ms on it of every target's front (its own drawn bold: on its
    own panel no other front lies above and to the left of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cross["targets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, on in zip(axes[0], names, strict=True):
        for i, (front_of, rows) in enumerate(cross["fronts"].items()):
            points = [(r["predicted_ms"][on], r["score"]) for r in rows if r["predicted_ms"][on] is not None]
            own = front_of == on
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o-" if own else "s--",
                color=colors[i % len(colors)],
                lw=2.2 if own else 1.0,
                label=f"front for {front_of}" + (" (its own)" if own else ""),
            )
        batch = cross["targets"][on]["target"].get("batch")
        axis.set_title(f"on {on}", fontsize=10)
        axis.set_xlabel(f"predicted ms per batch of {batch} on {on}")
        axis.set_ylabel("MAE score")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    fig.suptitle("each target's Pareto front priced on every target: a front left of another on a panel is faster")
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=100)
    plt.close(fig)
    return data.getvalue()
