"""Latency on a target device, predicted from a profiled table (docs/latency.md).

A *target* is a runtime, a precision, a batch, an input size and a thread count on one machine. ``maedet-bench
profile`` times, on that target, the operators backbones of the search space are made of (each convolution of the
stem and of the bottleneck blocks, the shortcut's average pool, a residual add where the runtime runs one) as the
runtime runs them inside whole networks, fits one small non-negative linear model per operator *role* (1×1 conv,
k×k conv at stride s, stem, pool, add) on cost features, and writes everything to one JSON table. This module reads
such a table and predicts any Structure in microseconds, with numpy only (no torch or ONNX Runtime import here), so
the search can use it in its hot loop.

Why per-operator linear models (and not a lookup grid, a tree or a per-block model): an operator's time on a CPU
runtime is close to a non-negative combination of its MACs, the activations it reads and writes, its weights and a
fixed cost, once channels are rounded up to the runtime's blocked layout (16 with AVX-512); a linear model
extrapolates to the widths a search drifts to, where a grid or a tree cannot, and stays a handful of numbers a
person can read. Every block of the space is a sum of the same few roles, so a few hundred operator samples
cover ~10⁶ distinct blocks. The fit is weighted by 1/time, so it minimises relative error.
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
    "CHANNEL_BLOCKS",
    "FEATURE_NAMES",
    "TABLE_FORMAT",
    "LatencyTable",
    "Op",
    "Piece",
    "conv_count",
    "fit_op_model",
    "load_latency_table",
    "op_features",
    "piece_ops",
    "predict_latency",
    "structure_pieces",
]

TABLE_FORMAT = "maedet-latency-table/2"
FEATURE_NAMES = ("macs", "in_elems", "out_elems", "weight_elems", "overhead")
CHANNEL_BLOCKS = (1, 8, 16)  # candidate channel blocks of the runtime's layout (none, AVX2, AVX-512)
PIECE_KINDS = ("stem", "first", "rest")
FIXED_ROLES = ("stem", "pw", "pool", "add")  # plus "k{k}s{s}" for every k×k conv at stride s
MAX_TABLE_BYTES = 64 * 2**20
MAX_TARGET_VALUE = 2**16  # a target's batch and input side: larger ones overflow the cost features' float64
VALIDATION_FIGURES = ("count", "rmspe_pct", "within_10pct", "spearman_rho", "wall_s")


@dataclass(frozen=True)
class Piece:
    """One unit a backbone repeats: the stem, a stage's first block (projection shortcut), or an identity block.

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


@dataclass(frozen=True)
class Op:
    """One operator the runtime runs for a piece, in the role its cost model is fitted for.

    ``size`` is the input feature size; ``kernel_size``/``stride`` are the conv's (the pool's window is 2×2/2).
    """

    role: str
    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    size: int

    @property
    def out_size(self) -> int:
        return _out_size(self.size, self.stride)


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def conv_role(kernel_size: int, stride: int) -> str:
    return "pw" if kernel_size == 1 and stride == 1 else f"k{kernel_size}s{stride}"


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


def conv_count(structure: Structure) -> int:
    """Convolutions a backbone runs: the stem, three per block and the projection shortcut of each stage."""
    return 1 + sum(3 * st.depth + 1 for st in structure.stages)


def piece_ops(piece: Piece) -> dict[str, Op]:
    """The operators of a piece by their place in the block (``conv1``..``conv3``, ``downsample``, ``shortcut``,
    ``add``), as zoo/maedet.py builds it: 1×1 → k×k (strided) → 1×1, plus the shortcut on a first block."""
    if piece.kind == "stem":
        return {"stem": Op("stem", piece.in_chs, piece.out_chs, piece.kernel_size, piece.stride, piece.size)}
    b, k, s, h = piece.bottleneck_chs, piece.kernel_size, piece.stride, piece.size
    h_out = _out_size(h, s)
    ops = {
        "conv1": Op("pw", piece.in_chs, b, 1, 1, h),
        "conv2": Op(conv_role(k, s), b, b, k, s, h),
        "conv3": Op("pw", b, piece.out_chs, 1, 1, h_out),
    }
    if piece.kind == "first":
        if s > 1:
            ops["downsample"] = Op("pool", piece.in_chs, piece.in_chs, 2, s, h)
        ops["shortcut"] = Op("pw", piece.in_chs, piece.out_chs, 1, 1, h_out)
    ops["add"] = Op("add", piece.out_chs, piece.out_chs, 1, 1, h_out)
    return ops


def _up(channels: int, block: int) -> int:
    return -(-channels // block) * block


def op_features(op: Op, batch: int = 1, channel_block: int = 1) -> np.ndarray:
    """Cost features of one operator for a batch (the columns of FEATURE_NAMES), as float64.

    Channels are rounded up to ``channel_block`` (the runtime's blocked layout pads them), except the stem's input,
    which the runtime reads as it is.
    """
    c_in = op.in_chs if op.role == "stem" else _up(op.in_chs, channel_block)
    c_out = _up(op.out_chs, channel_block)
    p_in, p_out = op.size * op.size, op.out_size * op.out_size
    if op.role == "pool":
        macs, weights, reads = 0.0, 0.0, p_in * c_in
    elif op.role == "add":
        macs, weights, reads = 0.0, 0.0, 2 * p_out * c_out
    else:
        k2 = op.kernel_size * op.kernel_size
        macs, weights, reads = float(p_out * c_in * c_out * k2), float(c_in * c_out * k2), p_in * c_in
    return np.asarray([macs * batch, reads * batch, p_out * c_out * batch, weights, 1.0], dtype=np.float64)


# ------------------------------------------------------------------------------------------- fitting
def _design(
    samples: Sequence[tuple[Sequence[Op], float]], roles: list[str], batch: int, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """One row per sample: for each role, the summed features of the sample's operators in that role."""
    width = len(FEATURE_NAMES)
    x = np.zeros((len(samples), len(roles) * width))
    for i, (ops, _ms) in enumerate(samples):
        for op in ops:
            j = roles.index(op.role) * width
            x[i, j : j + width] += op_features(op, batch, block)
    return x, np.asarray([ms for _ops, ms in samples], dtype=np.float64)


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares on relative error; columns rescaled to unit magnitude for conditioning."""
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    w = 1.0 / np.maximum(y, 1e-9)
    coef, _ = nnls(x / scale * w[:, None], y * w, maxiter=50 * x.shape[1])
    coef = coef / scale
    rmspe = float(100 * np.sqrt(np.mean(((x @ coef - y) * w) ** 2)))
    return coef, rmspe


def fit_op_model(samples: Sequence[tuple[Sequence[Op], float]], batch: int) -> dict[str, Any]:
    """Per-role non-negative coefficients (ms per feature unit) from timed samples.

    A sample is the operators it ran and their measured ms: one operator timed inside a network, or a whole piece
    timed on its own; the same linear model covers both. The channel block that fits best is kept (the runtime
    pads channels to its layout's block, which the fit discovers instead of assuming an instruction set).
    """
    samples = [(list(ops), float(ms)) for ops, ms in samples if ops and ms > 0]
    if not samples:
        raise MaeDetError("no timed samples to fit a latency model on.")
    roles = sorted({op.role for ops, _ in samples for op in ops})
    best: dict[str, Any] | None = None
    for block in CHANNEL_BLOCKS:
        coef, rmspe = _nnls_relative(*_design(samples, roles, batch, block))
        if best is None or rmspe < best["fit_rmspe_pct"] - 0.05:  # a larger block must fit clearly better
            width = len(FEATURE_NAMES)
            per_role = {r: coef[i * width : (i + 1) * width].tolist() for i, r in enumerate(roles)}
            best = {"channel_block": block, "roles": per_role, "fit_rmspe_pct": rmspe}
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------- the table
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
    created: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self._cache: dict[Piece, float] = {}
        self._block = int(self.model.get("channel_block", 1))
        self._coefs = {r: np.asarray(c, dtype=np.float64) for r, c in self.model.get("roles", {}).items()}

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
        cal = self.calibration
        per_conv = float(cal.get("per_conv_ms", 0.0)) * conv_count(structure)
        ms = float(cal.get("scale", 1.0)) * self.raw_sum_ms(structure) + per_conv + float(cal.get("offset_ms", 0.0))
        if not ms > 0:  # a negative offset larger than a network's time: no budget may be judged with it
            raise MaeDetError(
                f"latency table {self.source!r} predicts {ms:.3g} ms for this structure; a latency must be positive, "
                "so its calibration (scale, per_conv_ms, offset_ms) does not fit this network: profile the target "
                "again."
            )
        return ms

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
            "measurement": self.measurement,
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
            hint = "; profile the target again" if str(data["format"]).startswith("maedet-latency-table/") else ""
            raise MaeDetError(f"{where} has format {data['format']!r}; this maedet reads {TABLE_FORMAT!r}{hint}.")
        target = _check_target(data.get("target"), where)
        if data.get("features") != list(FEATURE_NAMES):
            raise MaeDetError(f"{where} uses features {data.get('features')!r}, not {list(FEATURE_NAMES)}.")
        calibration = data.get("calibration") or {"scale": 1.0, "offset_ms": 0.0}
        refs = data.get("references") or {}
        if not isinstance(calibration, Mapping) or not all(_finite(v) for v in calibration.values()):
            raise MaeDetError(f"{where} has a malformed 'calibration' object.")
        if not calibration.get("scale", 1.0) > 0:  # a zero or negative scale would let every candidate fit a budget
            raise MaeDetError(f"{where}: calibration 'scale' must be a positive number, got {calibration['scale']!r}.")
        if not isinstance(refs, Mapping) or not all(_finite(v) and v > 0 for v in refs.values()):
            raise MaeDetError(f"{where} has a malformed 'references' object (names → positive ms).")
        return cls(
            target=target,
            model=_check_model(data.get("model"), where),
            calibration={k: float(v) for k, v in calibration.items()},
            machine=dict(_mapping(data, "machine", where)),
            versions=dict(_mapping(data, "versions", where)),
            measurement=dict(_mapping(data, "measurement", where)),
            samples=_check_samples(data.get("samples"), where),
            validation=_check_validation(_mapping(data, "validation", where), where),
            references={str(k): float(v) for k, v in refs.items()},
            created=str(data.get("created", "")),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        return cls.from_dict(_read_json(Path(path)), source=str(path))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise MaeDetError(f"{where}: {key!r} must be an object.")
    return value


def _check_target(target: Any, where: str) -> dict[str, Any]:
    if not isinstance(target, Mapping):
        raise MaeDetError(f"{where} has no 'target' object.")
    for key in ("batch", "input_size"):
        value = target.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TARGET_VALUE:
            raise MaeDetError(
                f"{where}: target field {key!r} must be an integer from 1 to {MAX_TARGET_VALUE:,}, got {value!r}."
            )
    threads = target.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise MaeDetError(f"{where}: target field 'threads' must be a positive integer, got {threads!r}.")
    return dict(target)


def _check_samples(samples: Any, where: str) -> list[dict[str, Any]]:
    """The timed samples: a list of objects (what ``bench profile`` wrote), or nothing."""
    if samples is None:
        return []
    if not isinstance(samples, list) or not all(isinstance(s, Mapping) for s in samples):
        raise MaeDetError(f"{where}: 'samples' must be a list of objects, got {type(samples).__name__}.")
    return [dict(s) for s in samples]


def _check_validation(validation: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The held-out figures ``--info`` prints: each a finite number when present, the unscaled ones too."""
    unscaled = validation.get("unscaled") or {}
    if not isinstance(unscaled, Mapping):
        raise MaeDetError(f"{where}: the validation's 'unscaled' figures must be an object.")
    for scope, figures in (("validation", validation), ("unscaled validation", unscaled)):
        for key in VALIDATION_FIGURES:
            if key in figures and not _finite(figures[key]):
                raise MaeDetError(f"{where}: {scope} figure {key!r} must be a finite number, got {figures[key]!r}.")
    return dict(validation)


def _valid_role(role: Any) -> bool:
    if role in FIXED_ROLES:
        return True
    if not isinstance(role, str) or not role.startswith("k") or "s" not in role:
        return False
    k, _, s = role[1:].partition("s")
    return k.isdigit() and s.isdigit() and int(k) % 2 == 1 and int(s) >= 1


def _check_model(model: Any, where: str) -> dict[str, Any]:
    if not isinstance(model, Mapping) or not isinstance(model.get("roles"), Mapping) or not model["roles"]:
        raise MaeDetError(f"{where} has no fitted 'model' (an object with 'roles').")
    block = model.get("channel_block", 1)
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
        raise MaeDetError(f"{where}: the model's 'channel_block' must be an integer from 1 to 1024, got {block!r}.")
    roles: dict[str, list[float]] = {}
    for role, coefs in model["roles"].items():
        if not _valid_role(role):
            raise MaeDetError(f"{where}: unknown operator role {role!r} in the model.")
        if (
            not isinstance(coefs, list)
            or len(coefs) != len(FEATURE_NAMES)
            or not all(_finite(c) and c >= 0 for c in coefs)
        ):
            raise MaeDetError(f"{where}: the model of {role!r} must be {len(FEATURE_NAMES)} non-negative numbers.")
        roles[role] = [float(c) for c in coefs]
    for needed in ("stem", "pw"):
        if needed not in roles:
            raise MaeDetError(f"{where}: the model has no {needed!r} role.")
    return {**{k: v for k, v in model.items() if k != "roles"}, "channel_block": block, "roles": roles}


def _read_json(path: Path) -> Any:
    from maedet.jsonio import read_json

    return read_json(path, "latency table", max_bytes=MAX_TABLE_BYTES)


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
