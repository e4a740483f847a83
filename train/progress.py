"""The per-epoch progress bar (rank 0 only): loss terms, learning rate, images per second and time left."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["EpochBar"]


class EpochBar:
    """The tools' progress bar for one epoch, its description the loss terms, lr and images/s.

    It does nothing when ``enabled`` is false (ranks other than 0, --quiet).
    """

    def __init__(self, epoch: int, epochs: int, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.start, self.images = time.perf_counter(), 0
        if not enabled:
            return
        from maedet.cli import progress_bar

        self.label = f"epoch {epoch + 1}/{epochs}"
        self.bar = progress_bar()
        self.task = self.bar.add_task(self.label, total=total, completed=done)
        self.bar.start()

    def update(self, losses: dict[str, float], lr: float, images: int) -> None:
        if not self.enabled:
            return
        self.images += images
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        terms = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in losses.items())
        status = f"{self.label} {terms} lr {lr:.2e} {rate:.1f} img/s"
        self.bar.update(self.task, advance=1, description=status)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
