"""What a finished (or stopped) search leaves in its output folder, each file written atomically.

best.json, best_structure.txt (the authors' format), population.json (top-K), history.csv and search.png.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from maedet.fileio import atomic_write_bytes, atomic_write_text
from maedet.zoo import Structure, cost

from .evolution import Search
from .score import closed_form_score

__all__ = ["OUTPUT_NAMES", "best_record", "describe", "population_records", "write_outputs"]

OUTPUT_NAMES = ("best.json", "best_structure.txt", "population.json", "history.csv", "search.png")


def describe(structure: Structure, resolution: int = 480, ratios: Sequence[float] | None = None) -> dict[str, Any]:
    """Closed-form score and cost figures of one structure (what ``maedet-search score --json`` prints)."""
    result = closed_form_score(structure) if ratios is None else closed_form_score(structure, ratios)
    return {"score": result.score, "stage_scores": result.stage_scores, **asdict(cost(structure, resolution))}


def _stage_scores(search: Search, structure: Structure) -> dict[str, float]:
    s = search.settings
    if s.score == "forward":
        return s.forward.score(structure, s.ratios).stage_scores
    return closed_form_score(structure, s.ratios).stage_scores


def best_record(search: Search) -> dict[str, Any]:
    """The best.json object."""
    score, genome = search.best
    structure = search.structure(genome)
    return {
        "structure": structure.to_dict(),
        "score": score,
        "stage_scores": _stage_scores(search, structure),
        **asdict(cost(structure, search.settings.budget.resolution)),
        "budget": search.settings.budget.to_dict(),
        "seed": search.settings.seed,
        "candidates": search.candidates,
        "wall_s": round(search.wall_s, 3),
    }


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
                "structure": structure.to_dict(),
            }
        )
    return members


def _history_csv(search: Search) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["candidates", "best_score", "worst_score", "population", "wall_s"])
    for row in search.history:
        writer.writerow(
            [row.candidates, f"{row.best_score:.6f}", f"{row.worst_score:.6f}", row.population, f"{row.wall_s:.3f}"]
        )
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


def _plot(search: Search, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = search.settings.budget.resolution
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r.candidates for r in search.history], [r.best_score for r in search.history], color="tab:blue")
    left.set_xlabel("candidates evaluated")
    left.set_ylabel("best score")
    left.set_title("best score over the search")
    left.grid(alpha=0.3)
    flops = [search.evaluator.macs_and_flops(g, res)[1] / 1e9 for _, g in search.population]
    scores = [s for s, _ in search.population]
    right.scatter(flops, scores, s=10, color="tab:orange", label="final population")
    right.scatter(flops[:1], scores[:1], s=40, color="tab:red", label="best")
    if search.settings.budget.flops is not None:
        right.axvline(search.settings.budget.flops / 1e9, color="gray", ls="--", label="FLOPs budget")
    right.set_xlabel(f"official GFLOPs @{res}")
    right.set_ylabel("score")
    right.set_title("final population")
    right.legend(loc="lower right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, data.getvalue())
