"""What an AP-per-format run returns: one row per format (AP beside latency), what was skipped and why.

AP figures are COCO box AP as fractions (0..1, as pycocotools gives them); drops are in AP points (percent), the
unit the ``--max-ap-drop`` gate takes. With pseudo-labels the figures measure agreement with PyTorch fp32 on the
images, not accuracy: :attr:`AccuracyReport.metric` says which, and every output labels its columns by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .timing import LatencyStats

__all__ = ["ACCURACY", "AGREEMENT", "AccuracyReport", "FormatRow", "SkippedFormat"]

ACCURACY = "accuracy"
AGREEMENT = "agreement with PyTorch fp32"
AP_NAMES = ("AP", "AP50", "AP75")


@dataclass
class FormatRow:
    """One format: its AP on the data, its drop against PyTorch fp32, its latency and its speedup."""

    format: str
    backend: str
    device: str
    precision: str
    ap: dict[str, float]  # AP, AP50, AP75 as fractions
    detections: int
    latency: LatencyStats | None = None  # None: could not be timed (see ``note``)
    ap_drop: float = 0.0  # AP points (percent) lost against PyTorch fp32
    speedup: float | None = None  # latency of ``speedup_over`` / this latency
    speedup_over: str | None = None
    int8_mode: str | None = None
    file: str | None = None
    note: str | None = None

    def to_dict(self, prefix: str) -> dict[str, Any]:
        return {
            "format": self.format,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "int8_mode": self.int8_mode,
            **{f"{prefix}{name}": self.ap[name] for name in AP_NAMES},
            f"{prefix}drop_points": self.ap_drop,
            "detections": self.detections,
            "latency_ms": None if self.latency is None else self.latency.to_dict(),
            "speedup": self.speedup,
            "speedup_over": self.speedup_over,
            "file": self.file,
            "note": self.note,
        }


@dataclass(frozen=True)
class SkippedFormat:
    format: str
    backend: str
    reason: str


@dataclass
class AccuracyReport:
    """Every format measured on one detector and one image set, side by side in one run."""

    machine: dict[str, Any]
    config: dict[str, Any]
    metric: str  # ACCURACY, or AGREEMENT with pseudo-labels
    rows: list[FormatRow]
    skipped: list[SkippedFormat] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def prefix(self) -> str:
        """How the AP keys start: '' for accuracy, 'agreement_' for agreement with PyTorch fp32."""
        return "" if self.metric == ACCURACY else "agreement_"

    def row(self, name: str) -> FormatRow:
        return next(r for r in self.rows if r.format == name)

    def over_budget(self, max_drop: float) -> list[FormatRow]:
        """The rows that lose more than ``max_drop`` AP points against PyTorch fp32."""
        return [r for r in self.rows if r.ap_drop > max_drop]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "units": "AP as fractions (0..1); drops in AP points (percent); latency in ms",
            "machine": self.machine,
            "config": self.config,
            "rows": [r.to_dict(self.prefix) for r in self.rows],
            "skipped": [s.__dict__ for s in self.skipped],
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        }
