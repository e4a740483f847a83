"""Latency on a target device, predicted from a profiled table (docs/latency.md).

A *target* is a runtime, a precision, a batch, an input size and a thread count on one machine. ``maedet-bench
profile`` times the pieces a backbone of the search space is made of (the stem, a stage's first block with its
projection shortcut, and the repeated identity blocks) as the runtime really runs them, fits a small non-negative
linear model per piece kind on cost features, calibrates the sum on a few whole networks, and writes everything
to one JSON table. This module reads such a table and predicts any Structure in microseconds, with numpy only
(no torch or ONNX Runtime import here), so the search can use it in its hot loop.

Why a linear model on cost features (and not a lookup grid): the space has ~10⁶ distinct blocks per feature size,
a grid would need thousands of measurements per kernel size, while a block's time on a CPU runtime is very close to
a non-negative combination of its convolutions' MACs (per kernel size, since 1×1, 3×3 and 5×5 convs run at different
efficiencies), the activation traffic it reads and writes, its weights, and a fixed per-piece overhead. The fit is
weighted by 1/time, so it minimises relative error, which is what a budget needs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError

from .structure import Structure

__all__ = [
    "FEATURE_NAMES",
    "TABLE_FORMAT",
    "LatencyTable",
    "Piece",
    "fit_piece_model",
    "load_latency_table",
    "piece_features",
    "predict_latency",
    "structure_pieces",
]

TABLE_FORMAT = "maedet-latency-table/1"
PIECE_KINDS = ("stem", "first", "rest")
FEATURE_NAMES = ("macs_1x1", "macs_3x3", "macs_5x5", "macs_other", "act_elems", "weight_elems", "overhead")
MAX_TABLE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Piece:
    """One profiled unit: the stem, a stage's first block (projection shortcut), or a repeated identity block.

    ``size`` is the (square) input feature size of the piece; ``in_chs`` the channels it reads.
    """

    kind: str
    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    size: int
    bottleneck_chs: int = 0

    def key(self) -> str:
        fields = (self.in_chs, self.out_chs, self.bottleneck_chs, self.kernel_size, self.stride, self.size)
        return ":".join([self.kind, *map(str, fields)])

    @classmethod
    def from_key(cls, key: str) -> Piece:
        kind, *nums = key.split(":")
        i, o, b, k, s, h = (int(v) for v in nums)
        return cls(kind, i, o, k, s, h, b)


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def structure_pieces(structure: Structure, input_size: int) -> list[tuple[Piece, int]]:
    """The distinct pieces of a structure with their counts, at a square input of ``input_size``."""
    stem = structure.stem
    pieces: list[tuple[Piece, int]] = [
        (Piece("stem", stem.in_chs, stem.out_chs, stem.kernel_size, stem.stride, input_size), 1)
    ]
    size = _out_size(input_size, stem.stride)
    for st in structure.stages:
        pieces.append((Piece("first", st.in_chs, st.out_chs, st.kernel_size, st.stride, size, st.bottleneck_chs), 1))
        size = _out_size(size, st.stride)
        if st.depth > 1:
            pieces.append(
                (Piece("rest", st.out_chs, st.out_chs, st.kernel_size, 1, size, st.bottleneck_chs), st.depth - 1)
            )
    return pieces


def _conv_macs(by_kernel: list[float], k: int, macs: float) -> None:
    slot = {1: 0, 3: 1, 5: 2}.get(k, 3)
    by_kernel[slot] += macs


def piece_features(piece: Piece, batch: int = 1) -> np.ndarray:
    """Cost features of one piece for a batch (the columns of FEATURE_NAMES), as float64."""
    macs = [0.0, 0.0, 0.0, 0.0]
    h_in = piece.size
    h_out = _out_size(h_in, piece.stride)
    p_in, p_out = h_in * h_in, h_out * h_out
    k = piece.kernel_size
    if piece.kind == "stem":
        _conv_macs(macs, k, p_out * piece.in_chs * piece.out_chs * k * k)
        acts = p_in * piece.in_chs + p_out * piece.out_chs
        weights = piece.in_chs * piece.out_chs * k * k
    else:
        b = piece.bottleneck_chs
        _conv_macs(macs, 1, p_in * piece.in_chs * b + p_out * b * piece.out_chs)
        _conv_macs(macs, k, p_out * b * b * k * k)
        acts = p_in * piece.in_chs + p_in * b + p_out * b + 2 * p_out * piece.out_chs
        weights = piece.in_chs * b + b * b * k * k + b * piece.out_chs
        if piece.kind == "first":
            _conv_macs(macs, 1, p_out * piece.in_chs * piece.out_chs)
            acts += p_out * piece.in_chs + p_out * piece.out_chs
            weights += piece.in_chs * piece.out_chs
    row = [m * batch for m in macs] + [acts * batch, float(weights), 1.0]
    return np.asarray(row, dtype=np.float64)


def fit_piece_model(pieces: Sequence[Piece], ms: Sequence[float], batch: int) -> dict[str, list[float]]:
    """Non-negative least squares per piece kind, weighted by 1/time (relative error); coefficients in ms/feature.

    Features are rescaled to unit magnitude before the solve so the problem is well conditioned.
    """
    from scipy.optimize import nnls

    model: dict[str, list[float]] = {}
    times = np.asarray(ms, dtype=np.float64)
    for kind in PIECE_KINDS:
        idx = [i for i, p in enumerate(pieces) if p.kind == kind]
        if not idx:
            continue
        x = np.stack([piece_features(pieces[i], batch) for i in idx])
        y = times[idx]
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        w = 1.0 / np.maximum(y, 1e-9)
        coef, _ = nnls(x / scale * w[:, None], y * w)
        model[kind] = (coef / scale).tolist()
    return model


@dataclass
class LatencyTable:
    """A profiled target: what was measured, the fitted model, its validation, and reference latencies."""

    target: dict[str, Any]
    model: dict[str, list[float]]
    calibration: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "offset_ms": 0.0})
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)
    created: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self._cache: dict[Piece, float] = {}
        self._coefs = {k: np.asarray(v, dtype=np.float64) for k, v in self.model.items()}

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

    def piece_ms(self, piece: Piece) -> float:
        """Predicted ms of one piece for the target's batch (cached: the search asks for the same pieces often)."""
        hit = self._cache.get(piece)
        if hit is None:
            coef = self._coefs.get(piece.kind)
            if coef is None:
                raise MaeDetError(f"the latency table has no model for {piece.kind!r} pieces.")
            hit = self._cache[piece] = float(piece_features(piece, self.batch) @ coef)
        return hit

    def raw_sum_ms(self, structure: Structure) -> float:
        return sum(self.piece_ms(p) * n for p, n in structure_pieces(structure, self.input_size))

    def predict_ms(self, structure: Structure) -> float:
        """Predicted latency of a whole backbone, ms per batch of the target."""
        cal = self.calibration
        return float(cal.get("scale", 1.0)) * self.raw_sum_ms(structure) + float(cal.get("offset_ms", 0.0))

    def predict_ms_per_image(self, structure: Structure) -> float:
        return self.predict_ms(structure) / self.batch

    # ---------------------------------------------------------------- file format
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "created": self.created,
            "target": self.target,
            "machine": self.machine,
            "versions": self.versions,
            "features": list(FEATURE_NAMES),
            "model": self.model,
            "calibration": self.calibration,
            "references": self.references,
            "validation": self.validation,
            "samples": self.samples,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        from maedet.fileio import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", "latency table")

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> LatencyTable:
        """Validate a parsed table; anything foreign or malformed gets one sentence."""
        where = f"latency table {source!r}" if source else "latency table"
        if not isinstance(data, Mapping) or "format" not in data:
            raise MaeDetError(f"{where} is not a maedet latency table (no 'format' field).")
        if data["format"] != TABLE_FORMAT:
            raise MaeDetError(f"{where} has format {data['format']!r}; this maedet reads {TABLE_FORMAT!r}.")
        target = data.get("target")
        if not isinstance(target, Mapping):
            raise MaeDetError(f"{where} has no 'target' object.")
        for key in ("batch", "input_size"):
            value = target.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MaeDetError(f"{where}: target field {key!r} must be a positive integer, got {value!r}.")
        if data.get("features") != list(FEATURE_NAMES):
            raise MaeDetError(f"{where} uses features {data.get('features')!r}, not {list(FEATURE_NAMES)}.")
        model = _check_model(data.get("model"), where)
        calibration = data.get("calibration") or {"scale": 1.0, "offset_ms": 0.0}
        refs = data.get("references") or {}
        if not isinstance(calibration, Mapping) or not all(_finite(v) for v in calibration.values()):
            raise MaeDetError(f"{where} has a malformed 'calibration' object.")
        if not isinstance(refs, Mapping) or not all(_finite(v) and v > 0 for v in refs.values()):
            raise MaeDetError(f"{where} has a malformed 'references' object (names → positive ms).")
        return cls(
            target=dict(target),
            model=model,
            calibration={k: float(v) for k, v in calibration.items()},
            machine=dict(data.get("machine") or {}),
            versions=dict(data.get("versions") or {}),
            samples=list(data.get("samples") or []),
            validation=dict(data.get("validation") or {}),
            references={str(k): float(v) for k, v in refs.items()},
            created=str(data.get("created", "")),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        return cls.from_dict(_read_json(Path(path)), source=str(path))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_model(model: Any, where: str) -> dict[str, list[float]]:
    if not isinstance(model, Mapping) or not model:
        raise MaeDetError(f"{where} has no fitted 'model'.")
    out: dict[str, list[float]] = {}
    for kind, coefs in model.items():
        if kind not in PIECE_KINDS:
            raise MaeDetError(f"{where}: unknown piece kind {kind!r} in 'model' (expected {', '.join(PIECE_KINDS)}).")
        if (
            not isinstance(coefs, list)
            or len(coefs) != len(FEATURE_NAMES)
            or not all(_finite(c) and c >= 0 for c in coefs)
        ):
            raise MaeDetError(
                f"{where}: the model of {kind!r} pieces must be {len(FEATURE_NAMES)} non-negative numbers."
            )
        out[kind] = [float(c) for c in coefs]
    return out


def _read_json(path: Path) -> Any:
    import stat

    try:
        st = path.stat()
    except OSError as exc:
        raise MaeDetError(f"cannot read latency table {str(path)!r}: {exc.strerror}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise MaeDetError(f"latency table {str(path)!r} is not a regular file.")
    if st.st_size > MAX_TABLE_BYTES:
        raise MaeDetError(f"latency table {str(path)!r} is {st.st_size:,} bytes; tables are at most 64 MiB.")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MaeDetError(f"latency table {str(path)!r} is not valid JSON ({type(exc).__name__}).") from None


def load_latency_table(
    name_or_path: str | os.PathLike[str], *, batch: int | None = None, input_size: int | None = None
) -> Any:
    """A profiled table from a JSON path, or a built-in authors' V100 table by name (which needs batch and size).

    Either way the result has ``.target``, ``.label`` and ``.predict_ms(structure)`` (ms per batch).
    """
    from .latency_v100 import V100_TABLES, load_v100_table

    text = str(name_or_path)
    if text in V100_TABLES:
        if batch is None or input_size is None:
            raise MaeDetError(f"the built-in table {text!r} needs a batch size and an input size.")
        return load_v100_table(text, batch, input_size)
    table = LatencyTable.load(name_or_path)
    for what, given, stored in (("batch", batch, table.batch), ("input size", input_size, table.input_size)):
        if given is not None and given != stored:
            raise MaeDetError(
                f"latency table {text!r} was profiled at {what} {stored}, not {given}; profile that target instead."
            )
    return table


def predict_latency(structure: Structure, table: Any) -> float:
    """Predicted latency of ``structure`` on ``table``'s target, in ms per batch."""
    return float(table.predict_ms(structure))
