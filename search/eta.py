"""How long a search will take: said before a forward-score search starts, and estimated while any search runs.

The closed-form score costs microseconds; the paper's forward score runs a network per candidate (about a second
each on a laptop CPU), so 100,000 candidates can take days. Timing a few forward scores of the current best
structure (a budget-filling one, like most candidates) gives the estimate, logged as a warning when it exceeds an hour.

While a search runs, a candidate gets dearer as it goes: the population converges, more proposals are already seen
or over budget, and the number of mutations per child grows (``Search._propose``). An estimate from the rate so far,
or from a recent window alone, is therefore optimistic (a search shown "eta 24 s" took 75 s). :class:`SearchEta`
takes the rate of the most recent candidates and how fast that rate has been rising, and integrates it over the
candidates left; it never assumes the search will speed up.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from .evolution import Search

__all__ = ["LONG_RUN_S", "SearchEta", "format_duration", "forward_eta", "log_forward_eta"]

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


class SearchEta:
    """Seconds left in a search from its progress so far: ``update(candidates, elapsed_s)``, then ``remaining()``.

    Over the most recent ``window`` share of the candidates done, elapsed time is fitted by least squares as a
    quadratic in candidates: its slope at the newest sample is the current cost per candidate and its curvature how
    fast that cost rises. The rest costs ``rate · n + rise · n² / 2`` for the ``n`` candidates left; a falling rate
    (rise below zero) is taken as flat, so the estimate never counts on the search speeding up.
    """

    def __init__(self, total: int, window: float = 0.5, max_samples: int = 4096) -> None:
        self.total = total
        self.window = window
        self.samples: deque[tuple[int, float]] = deque(maxlen=max_samples)

    def update(self, candidates: int, elapsed_s: float) -> None:
        if not self.samples or candidates > self.samples[-1][0]:
            self.samples.append((candidates, elapsed_s))

    def remaining(self) -> float | None:
        """Seconds left (0 once done), or None until there are four samples to estimate from."""
        newest = self.samples[-1][0] if self.samples else 0
        if self.samples and newest >= self.total:
            return 0.0  # done: nothing left, however few samples there were
        recent = [s for s in self.samples if s[0] >= newest * (1.0 - self.window)]
        if len(recent) < 4:
            recent = list(self.samples)[-4:]
        if len(recent) < 4:
            return None
        c = np.asarray([s[0] for s in recent], dtype=np.float64) - newest
        t = np.asarray([s[1] for s in recent], dtype=np.float64)
        curve, slope, _ = np.polyfit(c, t, 2)
        rise = 2.0 * curve
        if rise <= 0.0:
            slope, rise = float(np.polyfit(c, t, 1)[0]), 0.0
        left = max(0, self.total - newest)
        return max(0.0, float(slope * left + rise * left * left / 2))


def eta_column(eta: SearchEta) -> object:
    """A rich progress column showing ``eta.remaining()`` (``-:--`` until it can be estimated)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _EtaColumn(ProgressColumn):
        def render(self, task: object) -> Text:
            left = eta.remaining()
            return Text("eta " + ("-:--" if left is None else format_duration(left)), style="progress.remaining")

    return _EtaColumn()
