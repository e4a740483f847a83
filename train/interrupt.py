"""Ctrl-C and SIGTERM during training: the first asks to stop after the current step (a resumable checkpoint is
written), the second stops at once (as a plain KeyboardInterrupt). Loader workers ignore both: a signal sent to the
whole process group (a terminal's Ctrl-C, ``timeout``, a job scheduler) must stop the run through the main process,
not kill a worker under it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["StopRequest", "ignore_stop_signals", "stop_on_signals"]


class StopRequest:
    """Set by the first SIGINT/SIGTERM; the training loop polls it between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # which signal asked: the exit status is 128 + it, as the shell reports

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A loader worker's ``worker_init_fn``: SIGINT and SIGTERM are the main process's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handlers for the block (main thread only; elsewhere the flag simply stays unset)."""
    stop = StopRequest()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                previous[sig] = signal.signal(sig, stop._handle)
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
