"""The goal a profiled latency table is validated against, its verdict, and what to do when it is missed.

A table is only worth searching with if its predictions hold on networks it never saw. The goal is stated once
here (docs/latency.md): against steady (anchor-scaled) times, at least 90% of the held-out networks within ±10%
and Spearman's ρ at least 0.95. The profile records the verdict in the table (``validation.meets_goal`` and
``validation.goal``); ``maedet-bench profile`` and ``maedet-search`` warn about a table that missed it. A table
written before the verdict was recorded is judged from its stored figures, or is unknown if it has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["VALIDATION_GOAL", "goal_advice", "goal_text", "meets_goal", "missed_goal_sentence", "verdict"]

VALIDATION_GOAL = {"min_within_10pct": 0.90, "min_spearman_rho": 0.95}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def goal_text(goal: Mapping[str, Any] | None = None) -> str:
    goal = goal or VALIDATION_GOAL
    within, rho = _number(goal.get("min_within_10pct")), _number(goal.get("min_spearman_rho"))
    return f"≥ {100 * (within or 0):.0f}% of held-out networks within ±10%, Spearman ρ ≥ {rho or 0:.2f}"


def verdict(figures: Mapping[str, Any]) -> bool | None:
    """Whether validation figures (steady times) meet the goal; None if they hold no usable figures."""
    within, rho = _number(figures.get("within_10pct")), _number(figures.get("spearman_rho"))
    if within is None or rho is None:
        return None
    return within >= VALIDATION_GOAL["min_within_10pct"] - 1e-12 and rho >= VALIDATION_GOAL["min_spearman_rho"]


def meets_goal(validation: Mapping[str, Any]) -> bool | None:
    """The recorded verdict; for an older table without one, the verdict of its stored figures (None: unknown)."""
    recorded = validation.get("meets_goal")
    return recorded if isinstance(recorded, bool) else verdict(validation)


def goal_advice(target: Mapping[str, Any], validation: Mapping[str, Any]) -> str:
    """What to try when a table misses the goal, from what its figures say about why."""
    advice = []
    threads = target.get("threads")
    if isinstance(threads, int) and threads > 1:
        advice.append("profile with --threads 1 (one thread is what the per-operator model predicts best)")
    raw = validation.get("unscaled") if isinstance(validation.get("unscaled"), Mapping) else {}
    raw_within, within = _number(raw.get("within_10pct")), _number(validation.get("within_10pct"))
    if raw_within is not None and within is not None and raw_within < within - 0.2:
        advice.append("profile on a quiet machine (other jobs slowed the measurements)")
    advice.append("measure a found backbone with maedet-bench before relying on its predicted latency")
    return "; ".join(advice)


def missed_goal_sentence(where: str, target: Mapping[str, Any], validation: Mapping[str, Any]) -> str:
    """One sentence: the figures, the goal, and what to do."""
    v = validation
    figures = (
        f"RMSPE {_number(v.get('rmspe_pct')) or math.nan:.1f}%, "
        f"{100 * (_number(v.get('within_10pct')) or 0):.0f}% within ±10%, "
        f"Spearman ρ {_number(v.get('spearman_rho')) or math.nan:.3f} on {v.get('count', '?')} held-out networks"
    )
    goal = v.get("goal") if isinstance(v.get("goal"), Mapping) else None
    return (
        f"{where} misses its validation goal ({goal_text(goal)}): {figures}, so its predictions can be off by more "
        f"than ±10%; {goal_advice(target, v)}."
    )
