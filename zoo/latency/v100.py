"""The authors' V100 per-conv latency tables as built-in targets, read exactly as their ``OpPredictor`` reads them.

MAE-DET's authors searched under a latency budget predicted from per-conv tables they measured with TensorRT on
one NVIDIA V100 (FP32, FP16, INT8; batches 1/32/64/128). Their predictor sums per-conv lookups with scipy's
Delaunay-linear interpolation, a nearest-point fallback, an interpolation across channel ratios and one across
batch sizes. This module reproduces that arithmetic, quirks included, so that their latency-budget search runs
here unchanged and gives their figures. Every figure is a *prediction* from their table, never a measurement
(docs/latency_v100.md lists the rules and the quirks). The tables are parsed once per process, on first use.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator, interp1d

from maedet.errors import MaeDetError

try:  # optional: limits OpenBLAS to one thread while triangulations are set up (see _PointSet._build)
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    threadpool_limits = None

from ..structure import Structure, load_structure
from .pieces import Piece

__all__ = [
    "DEVICE",
    "LABEL",
    "TABLES",
    "V100_TABLES",
    "Conv",
    "V100Predictor",
    "conv_list",
    "load",
    "load_v100_table",
    "piece_convs",
]

logger = logging.getLogger(__name__)

V100_TABLES = ("v100-fp32", "v100-fp16", "v100-int8")
TABLES = V100_TABLES  # the names this module serves (see loading.py)
DEVICE = "NVIDIA V100 (authors' TensorRT measurements)"
LABEL = "predicted (authors' V100 table)"
_DATA_DIR = Path(__file__).with_name("data") / "v100"
_SOURCE = (
    "github.com/alibaba/lightweight-neural-architecture-search @ 8ccaf889fcd0, "
    "tinynas/latency/op_profiler/V100/{} (Apache-2.0)"
)
_FILES = {  # table name -> (precision, shipped file, the authors' file name)
    "v100-fp32": ("fp32", "conv_data.out.gz", "conv_data.out"),
    "v100-fp16": ("fp16", "conv_data.out.fp16.gz", "conv_data.out.fp16"),
    "v100-int8": ("int8", "conv_data.out.int8.gz", "conv_data.out.int8"),
}

# One conv as the authors' predictor sees it, without the batch (a predictor parameter):
# (type, stride, elmt_fused, kernel, in_chs, in_size, out_chs). Type is always "Regular" in this space.
Conv = tuple[str, int, int, int, int, int, int]
_STEM_RATIO = 0.0  # the special ratio set of In_C = 3 rows, used for convs with 3 input channels only


def conv_list(structure: Structure, input_size: int) -> list[Conv]:
    """The convs the authors' predictor sums, in its order (their ``get_params_for_trt``).

    Per bottleneck block: 1×1 reduce at the input size, k×k carrying the stride, 1×1 expand at the output size
    with the element-wise add fused (every block), then on a stage's first block the 1×1 projection at the
    *output* size, not fused. BN, ReLU and the avgpool are not counted. Sizes shrink by ``size // stride``.
    """
    stem = structure.stem
    size = input_size
    convs: list[Conv] = [("Regular", stem.stride, 0, stem.kernel_size, stem.in_chs, size, stem.out_chs)]
    size //= stem.stride
    for stage in structure.stages:
        btn, out = stage.bottleneck_chs, stage.out_chs
        for i in range(stage.depth):
            in_chs, stride = (stage.in_chs, stage.stride) if i == 0 else (out, 1)
            out_size = size // stride
            convs.append(("Regular", 1, 0, 1, in_chs, size, btn))
            convs.append(("Regular", stride, 0, stage.kernel_size, btn, size, btn))
            convs.append(("Regular", 1, 1, 1, btn, out_size, out))
            if i == 0:
                convs.append(("Regular", 1, 0, 1, in_chs, out_size, out))
            size = out_size
    return convs


def piece_convs(piece: Piece) -> list[Conv]:
    """The convs of one piece, in :func:`conv_list`'s order; a piece's ``size`` is its input size."""
    k, s, size = piece.kernel_size, piece.stride, piece.size
    if piece.kind == "stem":
        return [("Regular", s, 0, k, piece.in_chs, size, piece.out_chs)]
    btn, out_size = piece.bottleneck_chs, size // s
    convs: list[Conv] = [
        ("Regular", 1, 0, 1, piece.in_chs, size, btn),
        ("Regular", s, 0, k, btn, size, btn),
        ("Regular", 1, 1, 1, btn, out_size, piece.out_chs),
    ]
    if piece.kind == "first":
        convs.append(("Regular", 1, 0, 1, piece.in_chs, out_size, piece.out_chs))
    return convs


@dataclass
class _PointSet:
    """One 2-D set of profiled points (Out_C, In_H) -> ms, in file order; interpolators built on first use."""

    points: np.ndarray
    values: np.ndarray
    _linear: LinearNDInterpolator | None = field(default=None, repr=False)
    _nearest: NearestNDInterpolator | None = field(default=None, repr=False)

    def predict(self, out_chs: int, in_size: int) -> float:
        """Delaunay-linear inside the hull; the nearest point (both axes rescaled) outside it or when negative."""
        if self._linear is None:
            self._build()
        query = np.array([[out_chs, in_size]], dtype=np.float64)
        value = float(self._linear(query)[0])
        if math.isnan(value) or value < 0:
            value = float(self._nearest(query)[0])
        return value

    def _build(self) -> None:
        """Triangulate, and compute the barycentric transforms now with one BLAS thread: scipy gets them from
        LAPACK on first use, and OpenBLAS's threads make that seconds instead of milliseconds on a busy machine."""
        with _one_blas_thread():
            linear = LinearNDInterpolator(self.points, self.values)
            linear.tri.transform  # noqa: B018 (computed and cached by scipy on first access)
        self._nearest = NearestNDInterpolator(self.points, self.values, rescale=True)
        self._linear = linear


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """threadpoolctl's limit where it is installed; without it only the first use of each set is slower."""
    if threadpool_limits is None:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ratio -> point set, for one (stride, fused, kernel) key and one batch
_RatioSets = dict[float, _PointSet]


def _read_rows(path: Path) -> np.ndarray:
    """All rows as numbers: Type (0 Regular, 1 Depthwise), Batch, In_C, In_H, In_W, Out_C, Kernel, Stride,
    ElmtFused, ms."""
    text = gzip.decompress(path.read_bytes()).decode("ascii")
    text = text.translate(str.maketrans("{},", "   ")).replace("Regular", "0").replace("Depthwise", "1")
    return np.array(text.split(), dtype=np.float64).reshape(-1, 10)


def _group_rows(rows: np.ndarray) -> dict[tuple[int, int, int], dict[int, _RatioSets]]:
    """The authors' database: Regular rows minus In_H = 4 and failed (-1) rows, grouped by (stride, fused,
    kernel), batch and channel ratio ``int(In_C / Out_C * 100) / 100`` (In_C = 3 rows: ratio 0).

    Inside a group the rows keep their file order: the Delaunay triangulation of a regular grid is ambiguous,
    and qhull resolves it by input order, so the order is part of the authors' predictions.
    """
    rows = rows[(rows[:, 0] == 0) & (rows[:, 3] != 4) & (rows[:, 9] >= 0)]
    in_c, out_c = rows[:, 2], rows[:, 5]
    ratio = np.where(in_c == 3, _STEM_RATIO, np.trunc(in_c / out_c * 100) / 100)
    group_cols = np.stack((rows[:, 7], rows[:, 8], rows[:, 6], rows[:, 1], ratio), axis=1)
    groups, group_of_row = np.unique(group_cols, axis=0, return_inverse=True)
    group_of_row = group_of_row.reshape(-1)
    order = np.argsort(group_of_row, kind="stable")
    bounds = np.searchsorted(group_of_row[order], np.arange(len(groups) + 1))
    database: dict[tuple[int, int, int], dict[int, _RatioSets]] = {}
    for (stride, fused, kernel, batch, r), lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True):
        members = order[lo:hi]
        points = np.ascontiguousarray(rows[members][:, [5, 3]])  # (Out_C, In_H)
        by_batch = database.setdefault((int(stride), int(fused), int(kernel)), {})
        by_batch.setdefault(int(batch), {})[float(r)] = _PointSet(points, rows[members, 9])
    return database


def _predict_in_batch(sets: _RatioSets, in_chs: int, in_size: int, out_chs: int) -> float:
    """One batch's prediction: the stem set for In_C = 3, an exact ratio set, or the across-ratio rule."""
    if in_chs == 3:
        stem_set = sets.get(_STEM_RATIO)
        return math.inf if stem_set is None else stem_set.predict(out_chs, in_size)
    ratio = in_chs / out_chs
    if ratio in sets:
        return sets[ratio].predict(out_chs, in_size)
    ratios: list[float] = []
    values: list[float] = []
    for r in sorted(sets):
        if r == _STEM_RATIO:
            continue
        value = sets[r].predict(out_chs, in_size)
        if len(ratios) < 2 or value > values[-1]:  # the authors keep the first two, then only increasing values
            ratios.append(r)
            values.append(value)
    if len(ratios) < 2:
        return math.inf
    value = float(interp1d(ratios, values, kind="linear", fill_value="extrapolate")([ratio])[0])
    if value < 0:
        value = ratio / ratios[0] * values[0]
    return value


class _V100Table:
    """One parsed table file and, per batch, the cache of per-conv predictions (the search asks the same convs
    again and again)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.precision, file_name, self.authors_file = _FILES[name]
        path = _DATA_DIR / file_name
        try:
            rows = _read_rows(path)
        except (OSError, ValueError, EOFError) as exc:
            reason = f"the built-in table {name} cannot be read from {path} ({exc}); reinstall maedet."
            raise MaeDetError(reason) from None
        self.database = _group_rows(rows)
        self.caches: dict[int, dict[Conv, float]] = {}

    def conv_ms(self, conv: Conv, batch: int) -> float:
        """ms per batch of one conv, or inf where the authors' predictor fails (no table for the key, no stem
        set, too few ratio sets, a negative batch extrapolation)."""
        _, stride, fused, kernel, in_chs, in_size, out_chs = conv
        by_batch = self.database.get((stride, fused, kernel))
        if by_batch is None:
            logger.debug("%s: no table for stride %d, fused %d, kernel %d: %s is infinite", self.name, *conv[1:4], conv)
            return math.inf
        if batch in by_batch:
            value = _predict_in_batch(by_batch[batch], in_chs, in_size, out_chs)
        else:
            batches = list(by_batch)
            values = [_predict_in_batch(by_batch[b], in_chs, in_size, out_chs) for b in batches]
            if not all(math.isfinite(v) for v in values):
                return math.inf
            value = float(interp1d(batches, values, fill_value="extrapolate")([batch])[0])
        if not value >= 0:
            logger.debug("%s: %s predicts %s at batch %d: infinite", self.name, conv, value, batch)
            return math.inf
        return value


@functools.cache
def _table(name: str) -> _V100Table:
    return _V100Table(name)


class V100Predictor:
    """Predicted latency of a Structure from one of the authors' V100 tables at one batch and input size."""

    label = LABEL

    def __init__(self, table: _V100Table, batch: int, input_size: int) -> None:
        self._table = table
        self.batch = batch
        self.input_size = input_size
        self.target: dict[str, Any] = {
            "name": table.name,
            "device": DEVICE,
            "precision": table.precision,
            "batch": batch,
            "input_size": input_size,
            "source": _SOURCE.format(table.authors_file),
        }
        self._cache = table.caches.setdefault(batch, {})

    def __repr__(self) -> str:
        return f"V100Predictor({self._table.name!r}, batch={self.batch}, input_size={self.input_size})"

    def conv_list(self, structure: Structure) -> list[Conv]:
        """The convs summed for ``structure`` at this input size (see :func:`conv_list`)."""
        return conv_list(_as_structure(structure), self.input_size)

    def predict_conv_ms(self, conv: Conv) -> float:
        """ms per batch of one conv (cached); inf where the authors' predictor fails."""
        ms = self._cache.get(conv)
        if ms is None:
            ms = self._cache[conv] = self._table.conv_ms(conv, self.batch)
        return ms

    def predict_ms(self, structure: Structure) -> float:
        """ms per batch: the sum over the structure's convs in the authors' order; inf if any conv fails."""
        cache = self._cache
        total = 0.0
        for conv in conv_list(_as_structure(structure), self.input_size):
            ms = cache.get(conv)
            if ms is None:
                ms = cache[conv] = self._table.conv_ms(conv, self.batch)
            total += ms
        return total

    def predict_ms_per_image(self, structure: Structure) -> float:
        """ms per batch / batch; / 1000 is the authors' figure, seconds per image, that their budget compares with."""
        return self.predict_ms(structure) / self.batch

    # ---------------------------------------------------------------- the rest of LatencyPredictor
    @property
    def identity(self) -> dict[str, Any]:
        return {"table": self._table.name, "batch": self.batch, "input_size": self.input_size}

    @property
    def references(self) -> dict[str, float]:
        """None: the authors published no measured network latencies with their tables."""
        return {}

    def out_size(self, size: int, stride: int) -> int:
        """The authors shrink sizes by ``size // stride``."""
        return size // stride

    def piece_ms(self, piece: Piece) -> float:
        """The sum of the piece's convs (cached per conv), in the authors' order."""
        total = 0.0
        for conv in piece_convs(piece):
            total += self.predict_conv_ms(conv)
        return total

    def network_ms(self, pieces_ms: float, convs: int) -> float:
        """The authors' sum has no per-network term."""
        return pieces_ms

    def accuracy_warning(self, where: str) -> str | None:
        """None: these are the authors' own lookups, reproduced exactly (docs/latency_v100.md)."""
        return None


def _as_structure(structure: Structure | Mapping[str, Any]) -> Structure:
    if isinstance(structure, Structure):
        return structure
    return load_structure(structure)


def _positive_int(what: str, value: Any) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise MaeDetError(f"the V100 tables need a positive whole number for {what}, got {value!r}.")
    return number


def load_v100_table(name: str, batch: int, input_size: int) -> V100Predictor:
    """The authors' V100 table ``name`` (v100-fp32, v100-fp16 or v100-int8) at a batch size and square input size.

    The table is parsed on first use and kept for the process. Batches other than 1/32/64/128 are interpolated
    (or extrapolated) linearly from the per-batch predictions, as the authors do.
    """
    if name not in V100_TABLES:
        raise MaeDetError(f"unknown V100 table {name!r}; the built-in ones are {', '.join(V100_TABLES)}.")
    return V100Predictor(_table(name), _positive_int("batch", batch), _positive_int("input_size", input_size))


load = load_v100_table  # what loading.py calls for a name in TABLES
