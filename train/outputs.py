"""What a run leaves in ``--out``: metrics (JSON lines and CSV), a plot of the curves, and the final detector folder.

The final detector is the folder ``maedet-convert`` writes (config.json + model.safetensors + model card), so
``maedet-export``, ``maedet-detect``, ``maedet-eval`` and ``maedet-bench`` take it as it is. Every file is written
through a temporary name: a reader sees the old version or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_output, atomic_output_dir, atomic_write_text
from maedet.zoo.detector_folder import push_detector_folder, save_detector_folder
from maedet.zoo.gfl import GFocalV2

__all__ = ["DETECTOR_DIR", "METRICS_CSV", "METRICS_JSONL", "PLOT", "MetricsLog", "push_to_hub", "write_detector"]

LOGGER = logging.getLogger("maedet")
METRICS_JSONL, METRICS_CSV, PLOT, DETECTOR_DIR = "metrics.jsonl", "metrics.csv", "curves.png", "detector"
_LOSSES = ("loss", "loss_cls", "loss_bbox", "loss_dfl")


class MetricsLog:
    """One record per epoch (losses, lr, images/s, val AP); the three files are rewritten from it each time."""

    def __init__(self, out: Path, records: Sequence[dict[str, Any]] = ()) -> None:
        self.out = out
        self.records: list[dict[str, Any]] = [dict(r) for r in records]

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(dict(record))
        lines = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write_text(self.out / METRICS_JSONL, lines, "metrics file")
        atomic_write_text(self.out / METRICS_CSV, self._csv(), "metrics file")
        self.plot()

    def _csv(self) -> str:
        columns: list[str] = []
        for record in self.records:
            columns += [k for k in record if k not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        return text.getvalue()

    def plot(self) -> None:
        """Loss terms, learning rate and val AP against the epoch, in one PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.records]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for name in _LOSSES:
            axes[0].plot(epochs, [r.get(name) for r in self.records], marker=".", label=name)
        axes[0].set(title="training loss", xlabel="epoch")
        axes[0].legend(fontsize=8)
        axes[1].plot(epochs, [r.get("lr") for r in self.records], marker=".")
        axes[1].set(title="learning rate (end of epoch)", xlabel="epoch")
        evaluated = [r for r in self.records if "AP" in r]
        for name in ("AP", "AP50", "AP75"):
            axes[2].plot([r["epoch"] for r in evaluated], [r[name] for r in evaluated], marker="o", label=name)
        axes[2].set(title="val box AP", xlabel="epoch", ylim=(0, 1))
        axes[2].legend(fontsize=8)
        fig.tight_layout()
        with atomic_output(self.out / PLOT, "plot") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)


def write_detector(model: GFocalV2, out: Path, training: dict[str, Any]) -> Path:
    """The final detector as a converted folder ``out/detector`` (replaced as a whole)."""
    folder = out / DETECTOR_DIR
    with atomic_output_dir(folder, "detector folder") as staging:
        save_detector_folder(model, staging, training=training)
    return folder


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload the detector folder; a failure (offline, no token) is one sentence that says the folder is kept."""
    try:
        url = push_detector_folder(folder, repo_id)
    except Exception as exc:  # the hub client raises many kinds (HTTP, auth, connection, offline)
        reason = " ".join(str(exc).split())[:160]
        raise MaeDetError(
            f"training finished, but pushing to the hub repo {repo_id!r} failed ({type(exc).__name__}: {reason}); "
            f"the trained detector is kept in {str(folder)!r} (upload it later with huggingface-cli upload)."
        ) from None
    LOGGER.info("pushed the detector to %s", url)
    return url
