"""Latency on a target device, predicted from a profiled table (docs/latency.md).

A *target* is a runtime, a precision, a batch, an input size and a thread count on one machine. ``maedet-bench
profile`` times, on that target, the operators backbones of the search space are made of (each convolution of the
stem and of the bottleneck blocks, the shortcut's average pool, a residual add where the runtime runs one) as the
runtime runs them inside whole networks, fits one small non-negative linear model per operator *role* (1×1 conv,
k×k conv at stride s, stem, pool, add) on cost features, and writes everything to one JSON table
(:mod:`.table_format`; the fit is in bench/profile_fit.py, beside the profiler). This module holds such a table and
predicts any Structure in microseconds, with numpy only (no torch or ONNX Runtime import here), so the search can
use it in its hot loop.

Why per-operator linear models (and not a lookup grid, a tree or a per-block model): an operator's time on a CPU
runtime is close to a non-negative combination of its MACs, the activations it reads and writes, its weights and a
fixed cost, once channels are rounded up to the runtime's blocked layout (16 with AVX-512); a linear model
extrapolates to the widths a search drifts to, where a grid or a tree cannot, and stays a handful of numbers a
person can read. Every block of the space is a sum of the same few roles, so a few hundred operator samples
cover ~10⁶ distinct blocks. The fit is weighted by 1/time, so it minimises relative error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError

from ..structure import Structure
from .detector import DetectorLatency, no_detector_sentence
from .goal import meets_goal, missed_goal_sentence
from .pieces import Op, Piece, conv_count, op_features, out_size, piece_ops, structure_pieces
from .table_format import check_table, read_table, table_document, write_table

__all__ = ["LatencyTable"]


@dataclass
class LatencyTable:
    """A profiled target: what was measured, the fitted model, its validation, and reference latencies."""

    target: dict[str, Any]
    model: dict[str, Any]
    calibration: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "offset_ms": 0.0})
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)  # the fitted memory model (.memory), when profiled
    created: str = ""
    source: str = ""
    detector: dict[str, Any] = field(default_factory=dict)  # the FPN + head + postprocess (zoo/latency/detector.py)

    def __post_init__(self) -> None:
        self._cache: dict[Piece, float] = {}
        self._block = int(self.model.get("channel_block", 1))
        self._coefs = {r: np.asarray(c, dtype=np.float64) for r, c in self.model.get("roles", {}).items()}
        self._regimes = {
            (role, int(size)): np.asarray(c, dtype=np.float64)
            for key, c in self.model.get("regimes", {}).items()
            for role, _, size in [key.rpartition("@")]
        }

    # ---------------------------------------------------------------- prediction
    @property
    def batch(self) -> int:
        return int(self.target["batch"])

    @property
    def input_size(self) -> int:
        return int(self.target["input_size"])

    @property
    def label(self) -> str:
        t = self.target
        return (
            f"predicted (profiled: {t.get('backend')} {t.get('precision')}, batch {t.get('batch')}, "
            f"{t.get('input_size')} px, {t.get('device', 'this machine')})"
        )

    def _role_coefs(self, op: Op) -> np.ndarray | None:
        """The op's role model. A pool or add the profile never timed is one the runtime fused away (None: it costs
        nothing extra); a k×k conv it never met uses the nearest profiled kernel at the same stride."""
        coef = self._coefs.get(op.role)
        if coef is not None or op.role in ("pool", "add"):
            return coef
        same_stride = [r for r in self._coefs if r.startswith("k") and r.endswith(f"s{op.stride}")]
        if op.role in ("stem", "pw") or not same_stride:
            raise MaeDetError(f"the latency table has no model for {op.role!r} operators.")
        nearest = min(same_stride, key=lambda r: (abs(int(r[1 : r.index("s")]) - op.kernel_size), r))
        return self._coefs[nearest]

    def op_ms(self, op: Op) -> float:
        """The op's role model at its feature size when the profile fitted one (``model.regimes``), else the
        role's."""
        coef = self._regimes.get((op.role, op.size))
        if coef is None:
            coef = self._role_coefs(op)
        return 0.0 if coef is None else float(op_features(op, self.batch, self._block) @ coef)

    def piece_ms(self, piece: Piece) -> float:
        """Predicted ms of one piece for the target's batch (cached: the search asks for the same pieces often)."""
        hit = self._cache.get(piece)
        if hit is None:
            hit = self._cache[piece] = sum(self.op_ms(op) for op in piece_ops(piece).values())
        return hit

    def raw_sum_ms(self, structure: Structure) -> float:
        return sum(self.piece_ms(p) * n for p, n in structure_pieces(structure, self.input_size))

    def predict_ms(self, structure: Structure) -> float:
        """Predicted latency of a whole backbone, ms per batch of the target: the calibrated operator sum plus a
        fixed cost per convolution the runtime runs (the per-node cost outside the kernels) and an offset."""
        ms = self.network_ms(self.raw_sum_ms(structure), conv_count(structure))
        if not ms > 0:  # a negative offset larger than a network's time: no budget may be judged with it
            raise MaeDetError(
                f"latency table {self.source!r} predicts {ms:.3g} ms for this structure; a latency must be positive, "
                "so its calibration (scale, per_conv_ms, offset_ms) does not fit this network: profile the target "
                "again."
            )
        return ms

    def predict_ms_per_image(self, structure: Structure) -> float:
        return self.predict_ms(structure) / self.batch

    # ---------------------------------------------------------------- whole detectors
    @property
    def has_detector(self) -> bool:
        return bool(self.detector)

    def detector_latency(self) -> DetectorLatency:
        """The whole-detector predictor of this table; a table profiled without ``--detector`` says so."""
        if not self.detector:
            raise MaeDetError(no_detector_sentence(self.source))
        return DetectorLatency(self, self.detector)

    # ---------------------------------------------------------------- the rest of LatencyPredictor
    def out_size(self, size: int, stride: int) -> int:
        return out_size(size, stride)

    def network_ms(self, pieces_ms: float, convs: int) -> float:
        """The calibration: scale × the operator sum + a fixed cost per convolution + an offset."""
        cal = self.calibration
        per_conv = float(cal.get("per_conv_ms", 0.0)) * convs
        return float(cal.get("scale", 1.0)) * pieces_ms + per_conv + float(cal.get("offset_ms", 0.0))

    @property
    def identity(self) -> dict[str, Any]:
        """The sha256 of the table's canonical JSON, and its target."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return {"table": "profiled", "sha256": hashlib.sha256(canonical.encode()).hexdigest(), "target": self.target}

    def accuracy_warning(self, where: str) -> str | None:
        met = meets_goal(self.validation)
        if met is False:
            return missed_goal_sentence(where, self.target, self.validation)
        if met is None:
            return f"{where} holds no validation figures, so how well it predicts is unknown."
        return None

    # ---------------------------------------------------------------- file format (table_format.py)
    def to_dict(self) -> dict[str, Any]:
        return table_document({f.name: getattr(self, f.name) for f in fields(self)})

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_table(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> LatencyTable:
        """Validate a parsed table; anything foreign or malformed gets one sentence."""
        where = f"latency table {source!r}" if source else "latency table"
        return cls(**check_table(data, where), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        return cls.from_dict(read_table(Path(path)), source=str(path))
