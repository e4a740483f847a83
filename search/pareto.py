"""The front of score against predicted latency: one short search per latency budget, swept geometrically.

Why a sweep of budgeted searches and not one multi-objective search: the search already maximises the score under
a limit, deterministically and resumably, so each point of the front is exactly what ``maedet-search run`` with
that latency budget finds. The budgets run geometrically from the fastest to the slowest of MAE-DET-S/M/L as the
table predicts them (never below the initial structure's own prediction, which every search must admit), so the
published backbones sit inside the swept range and can be compared with the front.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maedet.fileio import write_all_or_none
from maedet.zoo import Structure, builtin_structure, cost

from .budget import Budget
from .errors import SearchError
from .evolution import Search, SearchSettings
from .latency import LatencyTarget, latency_figures
from .score import DEFAULT_RATIOS, closed_form_score

__all__ = [
    "PARETO_NAMES",
    "PUBLISHED",
    "RESNETS",
    "ParetoSettings",
    "latency_budgets",
    "pareto_png",
    "run_pareto",
    "write_pareto",
]

PUBLISHED = {"MAE-DET-S": "maedet_s", "MAE-DET-M": "maedet_m", "MAE-DET-L": "maedet_l"}
RESNETS = {"ResNet-50": "resnet50", "ResNet-101": "resnet101"}
PARETO_FORMAT = "maedet-pareto/1"
PARETO_NAMES = ("pareto.json", "pareto.png")


@dataclass(frozen=True)
class ParetoSettings:
    """What every point's search shares; only the latency budget differs between points."""

    init: Structure
    points: int = 8
    iterations: int = 5000
    seed: int = 0
    population: int = 256
    layers: int | None = None  # None: the largest of MAE-DET-S/M/L's, so the front compares with their markers
    ratios: tuple[float, ...] = DEFAULT_RATIOS

    def __post_init__(self) -> None:
        if self.points < 1 or self.iterations < 1:
            raise SearchError("a Pareto sweep needs at least 1 point and 1 iteration per point.")


def latency_budgets(target: LatencyTarget, init: Structure, points: int) -> list[float]:
    """``points`` budgets (ms per batch), geometric from the fastest to the slowest MAE-DET-S/M/L prediction."""
    predicted = [target.predict_ms(builtin_structure(name)) for name in PUBLISHED.values()]
    finite = [ms for ms in predicted if math.isfinite(ms)]
    init_ms = target.predict_ms(init)
    if not finite or not math.isfinite(init_ms):
        raise SearchError("the latency table predicts no finite latency for MAE-DET-S/M/L or the initial structure.")
    low, high = max(min(finite), init_ms), max(finite)
    if init_ms > high:
        raise SearchError(
            f"the initial structure predicts {init_ms:.4g} ms, slower than MAE-DET-L ({high:.4g} ms); "
            "start from a smaller one."
        )
    if points == 1:
        return [high]
    return [low * (high / low) ** (i / (points - 1)) for i in range(points)]


def marker_layers() -> tuple[int, str]:
    """The conv layers of the deepest of MAE-DET-S/M/L and its name: the default layer limit of every point, so a
    front is never deeper than the published backbones it is plotted against."""
    layers = {label: cost(builtin_structure(name)).layers for label, name in PUBLISHED.items()}
    label = max(layers, key=lambda k: layers[k])
    return layers[label], label


def resolve_layers(settings: ParetoSettings) -> tuple[int, str]:
    """The layer limit of every search and where it comes from (the user's --budget-layers, or the markers')."""
    if settings.layers is not None:
        return settings.layers, "--budget-layers"
    layers, label = marker_layers()
    return layers, f"{label}'s (the deepest marker; default)"


def _point(search: Search, budget_ms: float, target: LatencyTarget) -> dict[str, Any]:
    score, genome = search.best
    structure = search.structure(genome)
    return {
        "budget_ms": budget_ms,
        "budget_ms_per_image": budget_ms / target.batch,
        "score": score,
        **latency_figures(structure, target),
        **asdict(cost(structure, search.settings.budget.resolution)),
        "candidates": search.candidates,
        "structure": structure.to_dict(),
    }


def _mark_front(points: list[dict[str, Any]]) -> None:
    """``on_front``: no point predicts at most its latency with a higher score."""
    best = -math.inf
    for point in sorted(points, key=lambda p: (p["latency_ms"], -p["score"])):
        point["on_front"] = point["score"] > best
        best = max(best, point["score"])


def _references(target: LatencyTarget, ratios: Sequence[float]) -> dict[str, Any]:
    stored = target.references
    published = {}
    for label, name in PUBLISHED.items():
        structure = builtin_structure(name)
        predicted = target.predict_ms(structure)
        published[label] = {
            "predicted_ms": predicted if math.isfinite(predicted) else None,
            "measured_ms": stored.get(name),
            "score": closed_form_score(structure, ratios).score,
        }
    resnets = {label: stored[name] for label, name in RESNETS.items() if name in stored}
    return {"published": published, "resnets_measured_ms": resnets}


def run_pareto(
    target: LatencyTarget,
    settings: ParetoSettings,
    progress: Callable[[int, Search], None] | None = None,
) -> dict[str, Any]:
    """Search once per budget; returns the pareto.json object (points, front flags, references, the target)."""
    resolution = int(target.predictor.target["input_size"])
    layers, layers_source = resolve_layers(settings)
    points = []
    for index, budget_ms in enumerate(latency_budgets(target, settings.init, settings.points)):
        search_settings = SearchSettings(
            init=settings.init,
            budget=Budget(layers=layers, latency_ms=budget_ms, resolution=resolution),
            ratios=settings.ratios,
            population=settings.population,
            iterations=settings.iterations,
            seed=settings.seed,
            latency=target,
        )
        search = Search(search_settings)
        search.run(progress=None if progress is None else lambda s, i=index: progress(i, s))
        points.append(_point(search, budget_ms, target))
    _mark_front(points)
    return {
        "format": PARETO_FORMAT,
        "latency_label": target.label,
        "latency_target": dict(target.predictor.target),
        "latency_table": target.identity,
        "settings": {
            "points": settings.points,
            "iterations": settings.iterations,
            "seed": settings.seed,
            "population": settings.population,
            "layers": layers,
            "layers_source": layers_source,
            "flops_resolution": resolution,
            "ratios": list(settings.ratios),
            "init": settings.init.to_dict(),
        },
        "points": points,
        "references": _references(target, settings.ratios),
    }


def write_pareto(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """pareto.json and pareto.png in ``out_dir``, both or neither."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1, allow_nan=False) + "\n"
    png = pareto_png(result)
    paths = [out / name for name in PARETO_NAMES]
    write_all_or_none(
        [(paths[0], lambda tmp: tmp.write_text(text, encoding="utf-8")), (paths[1], lambda tmp: tmp.write_bytes(png))]
    )
    return paths


def pareto_png(result: dict[str, Any]) -> bytes:
    """The front's plot: score against predicted latency, with MAE-DET-S/M/L and the ResNets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 5))
    points = result["points"]
    axis.scatter(
        [p["latency_ms"] for p in points], [p["score"] for p in points], s=18, color="tab:gray", label="best per budget"
    )
    front = sorted((p for p in points if p["on_front"]), key=lambda p: p["latency_ms"])
    axis.plot([p["latency_ms"] for p in front], [p["score"] for p in front], "o-", color="tab:blue", label="front")
    refs = result["references"]
    for (label, ref), color in zip(refs["published"].items(), ("tab:green", "tab:orange", "tab:red"), strict=True):
        if ref["predicted_ms"] is not None:
            axis.scatter(ref["predicted_ms"], ref["score"], marker="^", s=70, color=color, label=f"{label} (predicted)")
        if ref["measured_ms"] is not None:
            axis.scatter(ref["measured_ms"], ref["score"], marker="x", s=70, color=color, label=f"{label} (measured)")
    for (label, ms), style in zip(refs["resnets_measured_ms"].items(), ("--", ":"), strict=False):
        axis.axvline(ms, color="black", ls=style, lw=1, label=f"{label} (measured)")
    batch = result["latency_target"]["batch"]
    axis.set_xlabel(f"latency, ms per batch of {batch} — {result['latency_label']}")
    axis.set_ylabel("MAE score")
    settings = result["settings"]
    px = settings["flops_resolution"]
    axis.set_title(
        f"score against predicted latency; every search ≤ {settings['layers']} conv layers "
        f"({settings['layers_source']}); FLOPs counted at {px}×{px} px",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=110)
    plt.close(fig)
    return data.getvalue()
