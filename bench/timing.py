"""Honest timing on noisy machines: warm-up, then models measured in interleaved rounds, summarised robustly.

Absolute times on a shared 2-core machine drift by tens of percent within minutes. Interleaving (every round
measures every model once, in a rotated order) makes slow phases hit all models alike, so the ratios between
them hold even when absolute times move. The spread (interquartile range / median) says how noisy a row was.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LatencyStats", "choose_iterations", "percentile", "run_interleaved", "summarize", "time_call"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    """Per-inference latency in milliseconds over ``samples`` timed runs."""

    median: float
    p90: float
    p10: float
    minimum: float
    mean: float
    spread_pct: float  # interquartile range as a percentage of the median
    samples: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "median": self.median,
            "p90": self.p90,
            "p10": self.p10,
            "min": self.minimum,
            "mean": self.mean,
            "spread_pct": self.spread_pct,
            "samples": self.samples,
        }


def summarize(seconds: Sequence[float]) -> LatencyStats:
    """Median, p90, p10, min, mean and spread of per-run times given in seconds; figures in milliseconds."""
    if not seconds:
        raise ValueError("no timed runs to summarise")
    ms = [s * 1000.0 for s in seconds]
    median = statistics.median(ms)
    iqr = percentile(ms, 75) - percentile(ms, 25)
    return LatencyStats(
        median=median,
        p90=percentile(ms, 90),
        p10=percentile(ms, 10),
        minimum=min(ms),
        mean=statistics.fmean(ms),
        spread_pct=100.0 * iqr / median if median > 0 else 0.0,
        samples=len(ms),
    )


def time_call(fn: Callable[[], object]) -> float:
    """Wall time of one call in seconds (the callable synchronises its device itself)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def choose_iterations(latency_s: float, target_round_s: float = 0.25, cap: int = 50) -> int:
    """Runs per model per round: enough that one round of one model takes about ``target_round_s``.

    A 0.5 s CPU inference gets 1 run per round (rounds then interleave finely); a 3 ms GPU inference gets
    about 80, capped, so per-round overheads stay small against the measured time.
    """
    if latency_s <= 0:
        return cap
    return max(1, min(cap, math.ceil(target_round_s / latency_s)))


def _stop_times(now: float, deadline: float | None, rounds_owed: int, count: int) -> list[float | None]:
    """When each of ``count`` runners must stop within this round: the time left is shared by the rounds still
    owed (at least this one) and, within the round, evenly by the runners in their order; None: no budget."""
    if deadline is None:
        return [None] * count
    round_end = now + max(0.0, deadline - now) / max(1, rounds_owed)
    return [now + (round_end - now) * (i + 1) / count for i in range(count)]


def run_interleaved(
    runs: Mapping[Hashable, Callable[[], object]],
    iterations: Mapping[Hashable, int],
    *,
    max_rounds: int,
    min_rounds: int = 1,
    deadline: float | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[Hashable, list[float]]:
    """Time every callable in rounds; round r visits them in an order rotated by r.

    Stops after ``max_rounds``, or earlier (but never before ``min_rounds``) when another round would end past
    ``deadline`` (a ``time.monotonic()`` value), judged by the slowest round so far. The deadline also bounds the
    runs within a round: each callable runs at least once per round, and stops repeating when its share of the
    time left is used (``--iterations 1000000000`` cannot outlast ``--max-time``). ``on_round(done, planned)``
    reports progress. Returns each key's per-run times in seconds.
    """
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    keys = list(runs)
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    slowest_round = 0.0
    for r in range(max_rounds):
        if r >= min_rounds and deadline is not None and time.monotonic() + slowest_round > deadline:
            break
        start = time.monotonic()
        shift = r % len(keys) if keys else 0
        order = keys[shift:] + keys[:shift]
        for key, stop_at in zip(order, _stop_times(start, deadline, min_rounds - r, len(order)), strict=True):
            fn = runs[key]
            for _ in range(iterations.get(key, 1)):
                times[key].append(time_call(fn))
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
        slowest_round = max(slowest_round, time.monotonic() - start)
        if on_round is not None:
            on_round(r + 1, max_rounds)
    return times
