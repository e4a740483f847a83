"""The running search's ETA: honest when candidates get dearer as the search converges."""

from __future__ import annotations

import random

import pytest

from maedet.search.eta import SearchEta


def _trace(total: int, cost, batch: int = 32, jitter: float = 0.0, seed: int = 0):
    """(candidates, elapsed s) after every batch of a search whose i-th candidate costs ``cost(i)`` seconds."""
    rng = random.Random(seed)
    elapsed, out = 0.0, []
    for done in range(batch, total + 1, batch):
        elapsed += sum(cost(i) for i in range(done - batch, done)) * (1 + rng.uniform(-jitter, jitter))
        out.append((done, elapsed))
    return out


@pytest.mark.parametrize("shown_at", [0.1, 0.25, 0.5, 0.8])
def test_eta_follows_a_cost_that_grows_as_the_search_converges(shown_at):
    """Each candidate costs three times as much at the end as at the start (an estimate from the rate so far, or
    from a recent window alone, says 56-83% of the real rest here: 'eta 24 s', took 75 s); early on a curve fitted
    to a tenth of the run is less sure."""
    total = 32_000
    trace = _trace(total, lambda i: 1e-4 * (1 + 2 * i / total), jitter=0.05)
    eta = SearchEta(total)
    stop = int(len(trace) * shown_at)
    for candidates, elapsed in trace[:stop]:
        eta.update(candidates, elapsed)
    truth = trace[-1][1] - trace[stop - 1][1]
    assert eta.remaining() == pytest.approx(truth, rel=0.10 if shown_at >= 0.25 else 0.20)


def test_eta_of_a_steady_search_and_of_one_that_sped_up():
    total = 9_600
    steady = _trace(total, lambda i: 2e-4, jitter=0.1, seed=1)
    eta = SearchEta(total)
    for candidates, elapsed in steady[:100]:
        eta.update(candidates, elapsed)
    assert eta.remaining() == pytest.approx(steady[-1][1] - steady[99][1], rel=0.15)
    # a slow start (predictor caches filling) is not taken as the rate of the rest, nor extrapolated as a speed-up
    warm = _trace(total, lambda i: 1e-3 if i < 1000 else 2e-4, seed=2)
    eta = SearchEta(total)
    for candidates, elapsed in warm[:150]:
        eta.update(candidates, elapsed)
    assert eta.remaining() == pytest.approx(warm[-1][1] - warm[149][1], rel=0.10)


def test_eta_needs_a_few_samples_and_ends_at_zero():
    eta = SearchEta(100)
    assert eta.remaining() is None
    for candidates, elapsed in ((32, 0.1), (64, 0.2), (96, 0.3), (100, 0.31)):
        eta.update(candidates, elapsed)
    assert eta.remaining() == 0.0
    short = SearchEta(4)  # a search shorter than the four samples an estimate needs still ends at zero
    short.update(2, 0.1)
    assert short.remaining() is None
    short.update(4, 0.2)
    assert short.remaining() == 0.0
