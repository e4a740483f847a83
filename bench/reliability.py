"""When a measured ratio can be trusted, and a flag on every row whose ratio cannot.

A median over ``n`` interleaved rounds is uncertain by about ±1.57·IQR/√n (the boxplot notch: an approximate 95%
interval for a median, McGill, Tukey & Larsen 1978), i.e. ±1.57·spread/√rounds in percent. Runs inside one round
follow each other and drift together, so ``n`` counts rounds, not runs. A speedup divides two medians, so its
relative uncertainty is about the root sum of squares of both. A row is flagged unreliable when

* it had fewer than :data:`MIN_ROUNDS` interleaved rounds, or
* any speedup it shows is uncertain by more than ±:data:`MAX_UNCERTAINTY_PCT` percent (a row without any
  measured reference: its own median).

The flag is in the table (a marker and a footnote), the JSON (``"reliable": false`` and the reason), the CSV and
the plot (hatched bars, crossed points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .models import REFERENCE_MODELS, display_name, reference_label
from .results import BenchRow, reference_row
from .timing import LatencyStats

__all__ = ["MAX_UNCERTAINTY_PCT", "MIN_ROUNDS", "RULE", "assess_reliability", "median_uncertainty_pct"]

MIN_ROUNDS = 5
MAX_UNCERTAINTY_PCT = 15.0
NOTCH = 1.57  # the boxplot notch factor: median ± 1.57·IQR/√n
RULE = (
    f"unreliable: fewer than {MIN_ROUNDS} rounds, or a ratio uncertain by more than ±{MAX_UNCERTAINTY_PCT:.0f}% "
    "(±1.57·spread/√rounds per median, combined); rerun with more --rounds / --max-time on a quieter machine"
)


def median_uncertainty_pct(latency: LatencyStats, rounds: int) -> float:
    """About how far (± %) the median may be off: 1.57 · spread / √rounds."""
    return NOTCH * latency.spread_pct / math.sqrt(max(1, rounds))


def _ratio_uncertainties(rows: Sequence[BenchRow], row: BenchRow, references: Sequence[str]) -> dict[str, float]:
    """± % of each speedup the row has (a reference row against itself is exactly 1 and is left out)."""
    own = median_uncertainty_pct(row.latency, row.rounds)
    out: dict[str, float] = {}
    for ref in references:
        match = reference_row(rows, row, ref)
        if match is not None and match is not row:
            out[ref] = math.hypot(own, median_uncertainty_pct(match.latency, match.rounds))
    return out


def assess_reliability(rows: Sequence[BenchRow], references: Sequence[str] = REFERENCE_MODELS) -> None:
    """Set each row's ``ratio_uncertainty_pct`` and ``unreliable_reasons`` (empty: reliable)."""
    for row in rows:
        ratios = _ratio_uncertainties(rows, row, references)
        row.ratio_uncertainty_pct = {ref: ratios.get(ref) for ref in references}
        reasons = []
        if row.rounds < MIN_ROUNDS:
            reasons.append(f"only {row.rounds} timed round{'s' * (row.rounds != 1)} (at least {MIN_ROUNDS} needed)")
        for ref, value in ratios.items():
            if value > MAX_UNCERTAINTY_PCT:
                name = display_name(reference_label(row.model, ref))
                reasons.append(f"ratio vs {name} uncertain by ±{value:.0f}% (over ±{MAX_UNCERTAINTY_PCT:.0f}%)")
        own = median_uncertainty_pct(row.latency, row.rounds)
        if not ratios and own > MAX_UNCERTAINTY_PCT:
            reasons.append(f"median uncertain by ±{own:.0f}% (over ±{MAX_UNCERTAINTY_PCT:.0f}%)")
        row.unreliable_reasons = reasons
