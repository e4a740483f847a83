"""Progress of a long profile: a live bar on a terminal, one log line per measured unit otherwise.

A profile takes ten minutes or more. Redirected to a file, a live bar prints nothing until the end, so when stderr
is not a terminal every unit gets one log line: what was measured, how far along, and an estimate of the rest.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["profile_progress"]

LOG = logging.getLogger("maedet.bench.profile")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class _LogLines:
    """``advance(n, label)`` logs one line: unit count, label, elapsed and the rest at the mean rate so far."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.resumed = 0

    def __call__(self, n: int, label: str) -> None:
        self.done += n
        elapsed = time.monotonic() - self.started
        if label.startswith("already"):
            self.resumed = self.done
            if self.done:
                LOG.info("profiling: %d of %d units %s", self.done, self.total, label)
            return
        measured = self.done - self.resumed
        rest = elapsed / measured * (self.total - self.done) if measured else 0.0
        LOG.info(
            "profiling %d/%d: %s (%s elapsed, about %s left)",
            self.done,
            self.total,
            label,
            _duration(elapsed),
            _duration(rest),
        )


@contextmanager
def profile_progress(enabled: bool, total: int) -> Iterator[Callable[[int, str], None]]:
    """Yields ``advance(n, label)``: a rich bar on a terminal, log lines when stderr is redirected, or nothing."""
    if not enabled:
        yield lambda _n, _label: None
        return
    if not sys.stderr.isatty():
        yield _LogLines(total)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("profiling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with bar:
        task = bar.add_task("profile", total=total)
        yield lambda n, _label: bar.advance(task, n)
