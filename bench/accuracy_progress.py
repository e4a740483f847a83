"""Progress of an AP-per-format run: one line per step (an export, an evaluation, the timing), on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Advance", "Steps"]


class Advance:
    """Moves one step's bar: ``advance(n)`` after n images or rounds, ``advance.start(total)`` once it is known."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def __call__(self, count: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)

    def start(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)


class Steps:
    """The tools' progress bar (maedet.cli.progress_bar), or nothing at all for tests and --no-progress."""

    def __init__(self, enabled: bool) -> None:
        from maedet.cli import progress_bar

        self._progress = progress_bar() if enabled else None

    def __enter__(self) -> Steps:
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Advance]:
        task = self._progress.add_task(description, total=total) if self._progress is not None else None
        try:
            yield Advance(self._progress, task)
        finally:
            if self._progress is not None:
                done = next(t for t in self._progress.tasks if t.id == task).total or 1
                self._progress.update(task, total=done, completed=done)
