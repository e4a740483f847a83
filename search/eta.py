"""How long a forward-score search will take, said before it starts.

The closed-form score costs microseconds; the paper's forward score runs a network per candidate (about a second
each on a laptop CPU), so 100,000 candidates can take days. Timing a few forward scores of the current best
structure (a budget-filling one, like most candidates) gives the estimate, logged as a warning when it exceeds an hour.
"""

from __future__ import annotations

import logging
import time

from .evolution import Search

__all__ = ["LONG_RUN_S", "format_duration", "forward_eta", "log_forward_eta"]

LOGGER = logging.getLogger(__name__)
LONG_RUN_S = 3600.0


def format_duration(seconds: float) -> str:
    """``2 d 3 h``, ``5 h 12 min``, ``7 min``, ``40 s``: the two largest units, for a human estimate."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def forward_eta(search: Search, parallelism: int = 1, samples: int = 2) -> tuple[float, float]:
    """(seconds per candidate here, seconds for the remaining candidates with ``parallelism`` scorers)."""
    scorer = search.scorer()
    genome = search.best[1]
    started = time.perf_counter()
    for _ in range(samples):
        scorer(genome)
    per_candidate = (time.perf_counter() - started) / samples
    remaining = max(0, search.settings.iterations - search.candidates)
    return per_candidate, per_candidate * remaining / max(1, parallelism)


def log_forward_eta(search: Search, parallelism: int = 1) -> float:
    """Time a few forward scores, log the estimate (a warning above an hour) and return it in seconds."""
    per_candidate, total = forward_eta(search, parallelism)
    remaining = max(0, search.settings.iterations - search.candidates)
    workers = f"{parallelism} worker" + ("s" if parallelism != 1 else "")
    message = (
        f"--score forward takes about {per_candidate:.2f} s per candidate here; the remaining {remaining:,} "
        f"candidates will take about {format_duration(total)} with {workers}"
    )
    if total > LONG_RUN_S:
        LOGGER.warning(
            "%s. The closed-form score measures the same quantity in microseconds; or lower --iterations, or add "
            "--workers or a Ray cluster.",
            message,
        )
    else:
        LOGGER.info("%s.", message)
    return total
