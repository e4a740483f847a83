"""The per-epoch progress bar (rank 0 only): loss terms, learning rate, images per second and time left."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["EpochBar"]


class EpochBar:
    """A rich progress bar for one epoch; does nothing when ``enabled`` is false (other ranks, --quiet)."""

    def __init__(self, epoch: int, epochs: int, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.start, self.images = time.perf_counter(), 0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task("train", total=total, completed=done, status="")
        self.bar.start()

    def update(self, losses: dict[str, float], lr: float, images: int) -> None:
        if not self.enabled:
            return
        self.images += images
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items())
        self.bar.update(self.task, advance=1, status=f"{terms} lr {lr:.2e} {rate:.1f} img/s")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
