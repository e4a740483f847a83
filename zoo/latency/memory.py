"""Predicted peak memory of a backbone on ONNX Runtime CPU: weights, the activation arena's peak, a fixed overhead.

ONNX Runtime plans its activation buffers ahead of the first run and reuses a buffer once its last reader has run,
so the arena holds, at its fullest, the largest set of tensors alive at once along the execution order. The order
is the exported graph's: per block the shortcut (average pool, 1×1 projection) first, then 1×1 → k×k → 1×1 with
the residual add and ReLU fused into the last conv. The runtime's blocked CPU layout pads channels to a block (the
latency table's ``channel_block``); the four stage outputs (C2..C5) are graph outputs, reordered to the plain
layout and held to the end. The process's peak resident memory is then

    MiB = weights_coef · weight MiB + activations_coef · activation-peak MiB + overhead_mib

with the three coefficients fitted on measured networks (``maedet-bench profile --memory``; the weights are
read, kept and pre-packed, hence a coefficient above 1). The coefficients are plain data in the latency table's
``memory`` section; prediction is pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from maedet.errors import MaeDetError

from ..structure import Structure
from .pieces import Piece, out_size, piece_ops

__all__ = [
    "MEMORY_FEATURES",
    "MemoryModel",
    "activation_peak_bytes",
    "check_memory_section",
    "fit_memory_model",
    "memory_features",
    "network_tensors",
    "table_memory_model",
    "weight_bytes",
]

MEMORY_FEATURES = ("weights_mib", "activations_mib", "overhead")
FLOAT_BYTES = 4
MIB = 2**20


@dataclass(frozen=True)
class Tensor:
    """One activation the runtime allocates: its bytes, the tensors it reads, and whether it is a graph output."""

    name: str
    nbytes: int
    reads: tuple[str, ...]
    output: bool = False


def _up(channels: int, block: int) -> int:
    return -(-channels // block) * block


def _block_tensors(piece: Piece, x: str, prefix: str, batch: int, block: int) -> list[Tensor]:
    """A residual block's tensors in execution order (shortcut path first, then the three convs)."""
    ops = piece_ops(piece)

    def nbytes(op_name: str) -> int:
        op = ops[op_name]
        return batch * _up(op.out_chs, block) * op.out_size * op.out_size * FLOAT_BYTES

    tensors: list[Tensor] = []
    shortcut = x
    if "downsample" in ops:
        tensors.append(Tensor(f"{prefix}.pool", nbytes("downsample"), (x,)))
        shortcut = f"{prefix}.pool"
    if "shortcut" in ops:
        tensors.append(Tensor(f"{prefix}.proj", nbytes("shortcut"), (shortcut,)))
        shortcut = f"{prefix}.proj"
    tensors.append(Tensor(f"{prefix}.conv1", nbytes("conv1"), (x,)))
    tensors.append(Tensor(f"{prefix}.conv2", nbytes("conv2"), (f"{prefix}.conv1",)))
    tensors.append(Tensor(f"{prefix}.out", nbytes("conv3"), (f"{prefix}.conv2", shortcut)))
    return tensors


def network_tensors(structure: Structure, input_size: int, batch: int = 1, channel_block: int = 1) -> list[Tensor]:
    """Every activation of the exported backbone in execution order (the graph input excluded: it exists before)."""
    stem = structure.stem
    size = out_size(input_size, stem.stride)
    tensors = [Tensor("stem", batch * _up(stem.out_chs, channel_block) * size * size * FLOAT_BYTES, ("input",))]
    x = "stem"
    for s, st in enumerate(structure.stages):
        first = Piece("first", st.in_chs, st.out_chs, st.kernel_size, st.stride, size, st.bottleneck_chs)
        size = out_size(size, st.stride)
        rest = Piece("rest", st.out_chs, st.out_chs, st.kernel_size, 1, size, st.bottleneck_chs)
        for b in range(st.depth):
            tensors += _block_tensors(first if b == 0 else rest, x, f"s{s}.b{b}", batch, channel_block)
            x = f"s{s}.b{b}.out"
        tensors.append(Tensor(f"C{s + 2}", batch * st.out_chs * size * size * FLOAT_BYTES, (x,), output=True))
    return tensors


def activation_peak_bytes(tensors: list[Tensor]) -> int:
    """The most bytes alive at once when each tensor lives from its creation to its last reader (graph outputs: to
    the end); while an operator runs, its inputs and its output are all alive."""
    last_read = {name: i for i, t in enumerate(tensors) for name in t.reads}
    outputs = {t.name for t in tensors if t.output}
    live: dict[str, int] = {}
    peak = 0
    for i, t in enumerate(tensors):
        live[t.name] = t.nbytes
        peak = max(peak, sum(live.values()))
        done = [name for name in t.reads if last_read[name] == i]
        if t.name not in last_read:
            done.append(t.name)  # never read: freed at once unless it is a graph output
        for name in done:
            if name not in outputs:
                live.pop(name, None)
    return peak


def weight_bytes(structure: Structure) -> int:
    """fp32 bytes of the deployed convs' weights and biases (BN folded into them)."""
    s = structure.stem
    total = s.out_chs * (s.in_chs * s.kernel_size**2 + 1)
    for st in structure.stages:
        b, k = st.bottleneck_chs, st.kernel_size
        for i in range(st.depth):
            c_in = st.in_chs if i == 0 else st.out_chs
            total += b * (c_in + 1) + b * (b * k * k + 1) + st.out_chs * (b + 1)
        total += st.out_chs * (st.in_chs + 1)  # the first block's projection shortcut
    return total * FLOAT_BYTES


def memory_features(structure: Structure, input_size: int, batch: int, channel_block: int) -> np.ndarray:
    """The columns of MEMORY_FEATURES for one network, as float64."""
    peak = activation_peak_bytes(network_tensors(structure, input_size, batch, channel_block))
    return np.asarray([weight_bytes(structure) / MIB, peak / MIB, 1.0], dtype=np.float64)


@dataclass(frozen=True)
class MemoryModel:
    """Fitted coefficients of one target (the latency table's batch, input size and channel block)."""

    coefficients: tuple[float, float, float]
    batch: int
    input_size: int
    channel_block: int = 1
    validation: Mapping[str, Any] | None = None

    def predict_mib(self, structure: Structure) -> float:
        features = memory_features(structure, self.input_size, self.batch, self.channel_block)
        return float(np.dot(np.asarray(self.coefficients), features))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "features": list(MEMORY_FEATURES),
            "coefficients": list(self.coefficients),
            "channel_block": self.channel_block,
        }
        return data | ({"validation": dict(self.validation)} if self.validation else {})

    @classmethod
    def from_section(cls, section: Any, batch: int, input_size: int, where: str) -> MemoryModel:
        """The table's ``memory`` section, checked; anything wrong is one sentence."""
        if not isinstance(section, Mapping) or section.get("features") != list(MEMORY_FEATURES):
            raise MaeDetError(f"{where}: the 'memory' section must list the features {list(MEMORY_FEATURES)}.")
        coefs = section.get("coefficients")
        if not isinstance(coefs, list) or len(coefs) != 3 or not all(_finite(c) and c >= 0 for c in coefs):
            raise MaeDetError(f"{where}: the memory model's 'coefficients' must be three non-negative numbers.")
        block = section.get("channel_block", 1)
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
            raise MaeDetError(f"{where}: the memory model's 'channel_block' must be an integer from 1 to 1024.")
        validation = section.get("validation")
        return cls(
            (float(coefs[0]), float(coefs[1]), float(coefs[2])),
            batch,
            input_size,
            block,
            dict(validation) if isinstance(validation, Mapping) else None,
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fit_memory_model(
    structures: list[Structure], measured_mib: list[float], batch: int, input_size: int, channel_block: int
) -> MemoryModel:
    """Non-negative least squares of the measured MiB on the features, weighted so every network's *relative*
    error counts alike (the goal is stated in percent)."""
    from scipy.optimize import nnls

    if len(structures) < 3 or len(structures) != len(measured_mib):
        raise MaeDetError(f"a memory model needs at least 3 measured networks, got {len(structures)}.")
    x = np.stack([memory_features(s, input_size, batch, channel_block) for s in structures])
    y = np.asarray(measured_mib, dtype=np.float64)
    coefs, _ = nnls(x / y[:, None], np.ones_like(y))
    return MemoryModel((float(coefs[0]), float(coefs[1]), float(coefs[2])), batch, input_size, channel_block)


def check_memory_section(section: Any, where: str) -> dict[str, Any]:
    """A table's ``memory`` section, checked when the table loads (empty when absent: a table without a memory
    model), so a malformed one is one sentence there rather than a failure where it is used."""
    if section is None or section == {}:
        return {}
    MemoryModel.from_section(section, 1, 1, where)
    validation = section.get("validation")
    if validation is not None and not isinstance(validation, Mapping):
        raise MaeDetError(f"{where}: the memory model's 'validation' must be an object.")
    return dict(section)


def table_memory_model(table: Any, where: str) -> MemoryModel:
    """The memory model a latency table carries (its ``memory`` section), or one sentence saying how to add one."""
    section = getattr(table, "memory", None)
    if not section:
        raise MaeDetError(
            f"{where} has no memory model; fit one with 'maedet-bench profile --memory TABLE' before asking for a "
            "memory budget."
        )
    return MemoryModel.from_section(section, int(table.batch), int(table.input_size), where)
