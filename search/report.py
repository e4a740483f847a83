"""What a finished (or stopped) search leaves in its output folder, each file written atomically.

best.json, best_structure.txt (the authors' format), population.json (top-K), history.csv and search.png. With a
latency table, each also shows the predicted latency (labelled as a prediction, with the table's target).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from maedet.fileio import atomic_write_bytes, atomic_write_text
from maedet.zoo import Structure, cost

from .evolution import Search
from .latency import LatencyTarget, latency_figures
from .score import closed_form_score

__all__ = ["OUTPUT_NAMES", "best_record", "describe", "population_records", "write_outputs"]

OUTPUT_NAMES = ("best.json", "best_structure.txt", "population.json", "history.csv", "search.png")


def describe(
    structure: Structure,
    resolution: int = 480,
    ratios: Sequence[float] | None = None,
    latency: LatencyTarget | None = None,
) -> dict[str, Any]:
    """Closed-form score and cost figures of one structure (what ``maedet-search score --json`` prints), and its
    predicted latency on ``latency``'s target when given."""
    result = closed_form_score(structure) if ratios is None else closed_form_score(structure, ratios)
    info = {"score": result.score, "stage_scores": result.stage_scores, **asdict(cost(structure, resolution))}
    if latency is not None:
        info.update(latency_figures(structure, latency))
    return info


def _stage_scores(search: Search, structure: Structure) -> dict[str, float]:
    s = search.settings
    if s.score == "forward":
        return s.forward.score(structure, s.ratios).stage_scores
    return closed_form_score(structure, s.ratios).stage_scores


def best_record(search: Search) -> dict[str, Any]:
    """The best.json object."""
    score, genome = search.best
    structure = search.structure(genome)
    record = {
        "structure": structure.to_dict(),
        "score": score,
        "stage_scores": _stage_scores(search, structure),
        **asdict(cost(structure, search.settings.budget.resolution)),
        "budget": search.settings.budget.to_dict(),
        "seed": search.settings.seed,
        "candidates": search.candidates,
        "wall_s": round(search.wall_s, 3),
    }
    latency = search.settings.latency
    if latency is not None:
        record.update(latency_figures(structure, latency))
        record["latency_table"] = latency.identity
    if search.settings.memory is not None:
        from .memory_budget import memory_figures

        record.update(memory_figures(structure, search.settings.memory))
    return record


def population_records(search: Search, top_k: int) -> list[dict[str, Any]]:
    """The population.json list: the best ``top_k`` members with their score and cost."""
    members = []
    for rank, (score, genome) in enumerate(search.population[:top_k], start=1):
        structure = search.structure(genome)
        figures = cost(structure, search.settings.budget.resolution)
        members.append(
            {
                "rank": rank,
                "score": score,
                "flops": figures.flops,
                "params": figures.params,
                "layers": figures.layers,
                **_latency_ms(search, genome),
                "structure": structure.to_dict(),
            }
        )
    return members


def _latency_ms(search: Search, genome: tuple[int, ...]) -> dict[str, float | None]:
    """``{"latency_ms": predicted ms per batch}`` with a table (None where the predictor has no figure), else {}."""
    if search.latency is None:
        return {}
    ms = search.latency(genome)
    return {"latency_ms": ms if math.isfinite(ms) else None}


def _history_csv(search: Search) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    with_latency = search.latency is not None
    writer.writerow(
        ["candidates", "best_score", "worst_score", "population", "wall_s"]
        + (["best_latency_ms"] if with_latency else [])
    )
    for row in search.history:
        line = [row.candidates, f"{row.best_score:.6f}", f"{row.worst_score:.6f}", row.population, f"{row.wall_s:.3f}"]
        if with_latency:
            line.append("" if row.best_latency_ms is None else f"{row.best_latency_ms:.6g}")
        writer.writerow(line)
    return buf.getvalue()


def write_outputs(search: Search, out_dir: str | Path, top_k: int = 32, plot: bool = True) -> dict[str, Any]:
    """Write every output file; returns the best.json object."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best = best_record(search)
    atomic_write_text(out / "best.json", json.dumps(best, indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "best_structure.txt", search.structure(search.best[1]).to_authors_text())
    atomic_write_text(
        out / "population.json", json.dumps(population_records(search, top_k), indent=1, allow_nan=False) + "\n"
    )
    atomic_write_text(out / "history.csv", _history_csv(search))
    if plot:
        _plot(search, out / "search.png")
    return best


def _population_panel(axis: Any, xs: list[float], scores: list[float], xlabel: str, limit: float | None) -> None:
    """Score against one cost of the final population, the best member and the budget's limit marked."""
    axis.scatter(xs, scores, s=10, color="tab:orange", label="final population")
    axis.scatter(xs[:1], scores[:1], s=40, color="tab:red", label="best")
    if limit is not None:
        axis.axvline(limit, color="gray", ls="--", label="budget")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("score")
    axis.set_title("final population")
    axis.legend(loc="lower right")
    axis.grid(alpha=0.3)


def _plot(search: Search, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget, latency = search.settings.budget, search.latency
    res = budget.resolution
    fig, axes = plt.subplots(1, 3 if latency is not None else 2, figsize=(16 if latency is not None else 11, 4.2))
    left = axes[0]
    left.plot([r.candidates for r in search.history], [r.best_score for r in search.history], color="tab:blue")
    left.set_xlabel("candidates evaluated")
    left.set_ylabel("best score")
    left.set_title("best score over the search")
    left.grid(alpha=0.3)
    scores = [s for s, _ in search.population]
    flops = [search.evaluator.macs_and_flops(g, res)[1] / 1e9 for _, g in search.population]
    limit = budget.flops / 1e9 if budget.flops is not None else None
    _population_panel(axes[1], flops, scores, f"official GFLOPs @{res}", limit)
    if latency is not None:
        batch = search.settings.latency.batch
        ms = [latency(g) for _, g in search.population]
        xlabel = f"{search.settings.latency.label}\nms per batch of {batch}"
        _population_panel(axes[2], ms, scores, xlabel, budget.latency_ms)
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, data.getvalue())
