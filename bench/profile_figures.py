"""How well a latency table predicts: the figures of (predicted, measured) pairs, and a table's validation section.

One function computes the figures every validation reports (the profile's own held-out networks, ``maedet-bench
profile --validate``, a transferred table): RMSPE, the shares within ±5% and ±10%, the worst error and Spearman's
ρ. A validation section holds them against steady (anchor-scaled) times, the same against unscaled medians, the
verdict against the goal (:mod:`maedet.zoo.latency.goal`) and every network's measured and predicted time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from maedet.zoo.latency.goal import VALIDATION_GOAL
from maedet.zoo.latency.goal import verdict as goal_verdict

__all__ = ["validation_figures", "validation_section"]


def validation_figures(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """RMSPE, the shares within ±5% and ±10% (bounds inclusive), the worst error and Spearman's ρ of predictions
    against measurements."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    rel = (p - m) / m
    rho = float(spearmanr(p, m).statistic) if len(p) > 2 else float("nan")
    return {
        "count": len(p),
        "rmspe_pct": float(100 * math.sqrt(float(np.mean(rel**2)))),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05 + 1e-12)),  # float-safe inclusive bounds
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10 + 1e-12)),
        "max_abs_err_pct": float(100 * np.max(np.abs(rel))),
        "spearman_rho": rho,
    }


def validation_section(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A table's ``validation`` object from per-network rows (``predicted_ms``, ``measured_ms`` steady,
    ``measured_raw_ms`` unscaled): the steady figures at the top with the goal's verdict, the unscaled beside."""
    predicted = [r["predicted_ms"] for r in rows]
    figures = validation_figures(predicted, [r["measured_ms"] for r in rows])
    raw = validation_figures(predicted, [r["measured_raw_ms"] for r in rows])
    verdict = {"goal": dict(VALIDATION_GOAL), "meets_goal": bool(goal_verdict(figures))}
    return {**figures, **verdict, "unscaled": raw, "networks": [dict(r) for r in rows]}
