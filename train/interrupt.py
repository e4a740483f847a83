"""Ctrl-C and SIGTERM during training: the first asks to stop after the current step (a resumable checkpoint is
written), the second stops at once (as a plain KeyboardInterrupt)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["StopRequest", "stop_on_signals"]


class StopRequest:
    """Set by the first SIGINT/SIGTERM; the training loop polls it between steps."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


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
