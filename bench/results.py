"""What a bench run returns: one row per model × backend × input × batch, what was skipped and why, and the
speedups against ResNet-50/101 measured on the same backend in the same run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .memory import MEMORY_KINDS
from .models import REFERENCE_MODELS, reference_label
from .published import PUBLISHED_HEADLINE, PUBLISHED_SOURCE
from .timing import LatencyStats

__all__ = ["BenchResult", "BenchRow", "Skipped", "compute_speedups", "reference_row"]


@dataclass
class BenchRow:
    """One model on one backend at one input size and batch."""

    model: str
    backend: str
    precision: str
    device: str
    batch: int
    input: tuple[int, int]  # (H, W)
    params: int
    gmacs: float  # per image at this input
    latency: LatencyStats  # per inference (the whole batch), ms
    iterations_per_round: int
    rounds: int
    peak_memory_mb: float | None
    memory_kind: str
    speedup: dict[str, float | None] = field(default_factory=dict)  # reference latency / this latency
    published: dict[str, Any] | None = None
    # How far each speedup may be off (± %, see maedet.bench.reliability), and why the row cannot be trusted.
    ratio_uncertainty_pct: dict[str, float | None] = field(default_factory=dict)
    unreliable_reasons: list[str] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        """False when too few rounds or too much spread make this row's ratios untrustworthy."""
        return not self.unreliable_reasons

    @property
    def unreliable_reason(self) -> str | None:
        return "; ".join(self.unreliable_reasons) or None

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1000.0 / self.latency.median if self.latency.median > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "batch": self.batch,
            "input": list(self.input),
            "params": self.params,
            "gmacs": self.gmacs,
            "latency_ms": self.latency.to_dict(),
            "throughput": self.throughput,
            "speedup": dict(self.speedup),
            "peak_memory_mb": self.peak_memory_mb,
            "memory_kind": self.memory_kind,
            "iterations_per_round": self.iterations_per_round,
            "rounds": self.rounds,
            "reliable": self.reliable,
            "unreliable_reason": self.unreliable_reason,
            "ratio_uncertainty_pct": dict(self.ratio_uncertainty_pct),
        }
        if self.published is not None:
            out["published"] = self.published
        return out


@dataclass(frozen=True)
class Skipped:
    """A backend (or one model on it) that was asked for but could not be measured, and why."""

    backend: str
    reason: str
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "reason": self.reason}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[BenchRow]
    skipped: list[Skipped]
    elapsed_s: float = 0.0
    paper: bool = False

    def row(self, model: str, backend: str, batch: int | None = None, input: tuple[int, int] | None = None) -> BenchRow:
        for r in self.results:
            if r.model == model and r.backend == backend and batch in (None, r.batch) and input in (None, r.input):
                return r
        raise KeyError(f"no result for {model} on {backend}")

    def latency_ratio(self, model: str, reference: str, backend: str) -> float:
        """Median latency of ``model`` over that of ``reference`` on ``backend`` (first input/batch)."""
        return self.row(model, backend).latency.median / self.row(reference, backend).latency.median

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "machine": self.machine,
            "config": self.config,
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "memory_kinds": {k: MEMORY_KINDS[k] for k in sorted({r.memory_kind for r in self.results})},
            "elapsed_s": self.elapsed_s,
        }
        if self.paper:
            out["published_source"] = PUBLISHED_SOURCE
            out["published_headline"] = PUBLISHED_HEADLINE
        return out


def reference_row(rows: Sequence[BenchRow], row: BenchRow, reference: str) -> BenchRow | None:
    """The row ``row`` is compared with for ``reference``: same backend, batch and input (None if not measured).

    A detector row is compared with the same kind of ResNet detector (``resnet50_gfl``, or ``resnet50_gfl+nms``).
    """
    target = reference_label(row.model, reference)
    for r in rows:
        if r.model == target and r.backend == row.backend and r.batch == row.batch and r.input == row.input:
            return r
    return None


def compute_speedups(rows: Sequence[BenchRow], references: Sequence[str] = REFERENCE_MODELS) -> None:
    """Set each row's speedup vs every reference model: reference median latency / row median latency.

    Only rows of the same backend, batch and input are compared (:func:`reference_row`); None where the reference
    was not measured. A detector's speedups are against the ResNet detector, still under the key ``resnet50``.
    """
    for row in rows:
        for ref in references:
            match = reference_row(rows, row, ref)
            row.speedup[ref] = (
                match.latency.median / row.latency.median if match is not None and row.latency.median > 0 else None
            )
