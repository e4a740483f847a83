"""Predicted peak memory of a backbone on ONNX Runtime CPU: the larger of what creating its session and what running
it take.

Creating a session reads the model and converts its weights one initializer at a time, in the exported model's
order: the model's copy of every weight, those converted so far, and four copies of the one in hand are alive at
once, so the live blocks peak at the weights plus the largest (converted before + 4 × one tensor) along the order.
With a fixed glibc mmap threshold that peak, plus a constant, is the resident set's; with glibc's default dynamic
threshold the copies come from the heap, whose freed holes stay resident, and the peak rises to about three times
the weights, plus the few largest weight tensors once more. Running it adds the activation arena to
what creation left resident; ONNX Runtime plans activation buffers ahead and reuses one once its last reader has run,
so the arena holds, at its fullest, the largest set of tensors alive at once along the execution order. The order
is the exported graph's: per block the shortcut (average pool, 1×1 projection) first, then 1×1 → k×k → 1×1 with
the residual add and ReLU fused into the last conv. The runtime's blocked CPU layout pads channels to a block (the
latency table's ``channel_block``); the four stage outputs (C2..C5) are graph outputs, reordered to the plain
layout and held to the end. The process's peak is then

    MiB = max(creation, run),  each phase a non-negative linear combination of the FEATURES below,

with the coefficients fitted on networks measured phase by phase (``maedet-bench profile --memory``). Whether the
arena's regions land in heap holes creation freed or in fresh pages is the allocator's placement, not the
network's; the fit takes its average. The phases' features and coefficients are plain data in the latency table's
``memory`` section; prediction is pure numpy. A section measured with a fixed glibc mmap threshold
(``MALLOC_MMAP_THRESHOLD_``, which keeps the allocator from holding freed weight copies in heap holes) says so, and
predicts processes started with the same setting. Tables written before the two phases (one linear model of weights,
activation peak and overhead) still load and predict as one phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from maedet.errors import MaeDetError

from ..structure import Structure
from .pieces import Piece, out_size, piece_ops
from .table_numbers import BOUND, table_number

__all__ = [
    "FEATURES",
    "MAX_MMAP_THRESHOLD",
    "MIN_FIT_NETWORKS",
    "MMAP_THRESHOLD_ENV",
    "PHASE_FEATURES",
    "MemoryModel",
    "Phase",
    "Tensor",
    "activation_features",
    "activation_peak_bytes",
    "check_memory_section",
    "features_of",
    "fit_memory_model",
    "fit_phases",
    "initializer_bytes",
    "initializer_parts",
    "memory_features",
    "network_tensors",
    "table_memory_model",
    "weight_bytes",
    "weight_features",
    "weights_in_flight_bytes",
]

FEATURES = {
    "weights_mib": "fp32 weights and biases of the deployed convs",
    "largest_weights_mib": "the three largest weight tensors together",
    "weights_in_flight_mib": "the weights and, at its fullest, what converting them one by one holds on top",
    "activations_mib": "the planned activation peak",
    "largest_activation_mib": "the largest single activation",
    "overhead": "a fixed MiB",
}
LARGEST_WEIGHTS = 3  # how many of the largest weight tensors add their transient copy (the best of 1, 3, 5, 10, 20)
COPIES_IN_FLIGHT = 4  # copies of one initializer alive while the session converts it (traced; 3 and 5 fit worse)
PHASE_FEATURES = {
    "creation": ("weights_mib", "largest_weights_mib", "weights_in_flight_mib", "overhead"),
    "run": ("weights_mib", "largest_weights_mib", "activations_mib", "largest_activation_mib", "overhead"),
}
MAX_PHASES = 8  # a table naming more is not one this code wrote
MIN_FIT_NETWORKS = max(len(f) for f in PHASE_FEATURES.values()) + 1  # one more than a phase's coefficients
LEGACY_FEATURES = ("weights_mib", "activations_mib", "overhead")  # the one-phase sections of older tables
FLOAT_BYTES = 4
MIB = 2**20
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # glibc: a fixed mmap threshold in bytes (and no dynamic one)
MAX_MMAP_THRESHOLD = 32 * MIB  # the largest glibc accepts on 64-bit systems (half its heap's maximum size)


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
    total = peak = 0  # bytes alive now (kept as a running sum: the search asks for thousands of networks)
    for i, t in enumerate(tensors):
        total += t.nbytes - live.get(t.name, 0)
        live[t.name] = t.nbytes
        peak = max(peak, total)
        done = [name for name in t.reads if last_read[name] == i]
        if t.name not in last_read:
            done.append(t.name)  # never read: freed at once unless it is a graph output
        for name in done:
            if name not in outputs:
                total -= live.pop(name, 0)
    return peak


def initializer_bytes(structure: Structure) -> list[int]:
    """fp32 bytes of each deployed conv's weight and bias in the order the exported model lists its initializers
    (ONNX Runtime converts them in it): per block its 1×1 and k×k convs, then for a first block the last 1×1 when it
    strides or widens and the projection shortcut; after all of them every other block's last 1×1, last stage first
    and last block first. Read from exported models: 54 of 56 match exactly, the other two place one first
    block's last 1×1 elsewhere (0.9 MiB in ``weights_in_flight_bytes`` at most)."""
    ahead, behind = initializer_parts(structure)
    return ahead + behind


def initializer_parts(structure: Structure) -> tuple[list[int], list[int]]:
    """:func:`initializer_bytes` split where an exported detector lists its FPN and head weights: between the
    blocks' convs in order (``ahead``) and the other blocks' last 1×1s listed after them (``behind``)."""
    s = structure.stem
    ahead = [s.out_chs * (s.in_chs * s.kernel_size**2 + 1)]
    behind: list[list[int]] = []
    for st in structure.stages:
        b, k = st.bottleneck_chs, st.kernel_size
        last = []
        for i in range(st.depth):
            c_in = st.in_chs if i == 0 else st.out_chs
            ahead += [b * (c_in + 1), b * (b * k * k + 1)]
            (ahead if i == 0 and (st.stride == 2 or st.in_chs != st.out_chs) else last).append(st.out_chs * (b + 1))
            if i == 0:
                ahead.append(st.out_chs * (st.in_chs + 1))
        behind.append(last[::-1])
    return [n * FLOAT_BYTES for n in ahead], [n * FLOAT_BYTES for last in behind[::-1] for n in last]


def weights_in_flight_bytes(structure: Structure) -> int:
    """The weights plus the most that converting them holds on top: ONNX Runtime converts the initializers in turn,
    keeping each converted one and holding COPIES_IN_FLIGHT copies of the one in hand, while the model's own copy of
    every weight stays until all are done; so the peak is the weights plus, over the order, the largest of (bytes
    converted before a tensor + COPIES_IN_FLIGHT × its bytes)."""
    return _in_flight(initializer_bytes(structure))


def _in_flight(sizes: list[int]) -> int:
    done = most = 0
    for nbytes in sizes:
        most = max(most, done + COPIES_IN_FLIGHT * nbytes)
        done += nbytes
    return done + most


def weight_bytes(structure: Structure) -> int:
    """fp32 bytes of the deployed convs' weights and biases (BN folded into them)."""
    return sum(initializer_bytes(structure))


def memory_features(structure: Structure, input_size: int, batch: int, channel_block: int) -> dict[str, float]:
    """Every feature of FEATURES for one network (MiB, and 1 for the overhead)."""
    tensors = network_tensors(structure, input_size, batch, channel_block)
    return features_of(initializer_bytes(structure), tensors)


def features_of(in_order: Sequence[int], tensors: Sequence[Tensor]) -> dict[str, float]:
    """FEATURES of a graph given its initializers' bytes in the exported order and its activations in execution
    order."""
    peak, largest = activation_peak_bytes(list(tensors)), max(t.nbytes for t in tensors)
    return weight_features(in_order) | activation_features(peak, largest)


def weight_features(in_order: Sequence[int]) -> dict[str, float]:
    """The weights' FEATURES (and the overhead's 1) from the initializers' bytes in the exported order."""
    weights = sorted(in_order, reverse=True)
    return {
        "weights_mib": sum(weights) / MIB,
        "largest_weights_mib": sum(weights[:LARGEST_WEIGHTS]) / MIB,
        "weights_in_flight_mib": _in_flight(list(in_order)) / MIB,
        "overhead": 1.0,
    }


def activation_features(peak_bytes: int, largest_bytes: int) -> dict[str, float]:
    """The activations' FEATURES from the planned peak and the largest single tensor (bytes)."""
    return {"activations_mib": peak_bytes / MIB, "largest_activation_mib": largest_bytes / MIB}


@dataclass(frozen=True)
class Phase:
    """One phase's prediction: MiB = coefficients · the named features."""

    features: tuple[str, ...]
    coefficients: tuple[float, ...]

    def mib(self, features: Mapping[str, float]) -> float:
        return float(sum(c * features[f] for f, c in zip(self.features, self.coefficients, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coefficients": list(self.coefficients)}


@dataclass(frozen=True)
class MemoryModel:
    """Fitted phases of one target (the latency table's batch, input size and channel block); the peak is the
    largest phase's. ``malloc_mmap_threshold`` (bytes) is the fixed glibc mmap threshold the networks were measured
    with (None: glibc's default, dynamic one)."""

    phases: Mapping[str, Phase]
    batch: int
    input_size: int
    channel_block: int = 1
    validation: Mapping[str, Any] | None = field(default=None, compare=False)
    malloc_mmap_threshold: int | None = None
    what: ClassVar[str] = "memory"  # what its predictions are, in sentences

    def features(self, structure: Structure) -> dict[str, float]:
        """The FEATURES this model predicts from (a backbone's; a detector model's add its FPN and head)."""
        return memory_features(structure, self.input_size, self.batch, self.channel_block)

    def phase_mib(self, structure: Structure) -> dict[str, float]:
        """Each phase's predicted MiB."""
        features = self.features(structure)
        return {name: phase.mib(features) for name, phase in self.phases.items()}

    def predict_mib(self, structure: Structure) -> float:
        return max(self.phase_mib(structure).values())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "phases": {name: phase.to_dict() for name, phase in self.phases.items()},
            "channel_block": self.channel_block,
        }
        if self.malloc_mmap_threshold is not None:
            data["malloc_mmap_threshold"] = self.malloc_mmap_threshold
        return data | ({"validation": dict(self.validation)} if self.validation else {})

    @classmethod
    def from_section(cls, section: Any, batch: int, input_size: int, where: str) -> MemoryModel:
        """The table's ``memory`` section, checked; anything wrong is one sentence."""
        if not isinstance(section, Mapping):
            raise MaeDetError(f"{where}: the 'memory' section must be an object.")
        if "phases" in section:
            raw = section["phases"]
            named = isinstance(raw, Mapping) and all(isinstance(k, str) for k in raw)
            if not named or not 0 < len(raw) <= MAX_PHASES:
                raise MaeDetError(
                    f"{where}: the memory model's 'phases' must map 1 to {MAX_PHASES} phase names to their models."
                )
            phases = {name: _phase(value, f"{where}: memory phase {name!r}") for name, value in raw.items()}
        elif section.get("features") == list(LEGACY_FEATURES):
            phases = {"process": _phase(section, f"{where}: the memory model")}
        else:
            raise MaeDetError(f"{where}: the 'memory' section must hold 'phases' (maedet-bench profile --memory).")
        block = section.get("channel_block", 1)
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
            raise MaeDetError(f"{where}: the memory model's 'channel_block' must be an integer from 1 to 1024.")
        threshold = section.get("malloc_mmap_threshold")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= MAX_MMAP_THRESHOLD
        ):
            raise MaeDetError(
                f"{where}: the memory model's 'malloc_mmap_threshold' must be an integer from 0 to "
                f"{MAX_MMAP_THRESHOLD} bytes."
            )
        validation = section.get("validation")
        validation = dict(validation) if isinstance(validation, Mapping) else None
        return cls(phases, batch, input_size, block, validation, threshold)


def _phase(value: Any, where: str) -> Phase:
    if not isinstance(value, Mapping):
        raise MaeDetError(f"{where} must be an object with 'features' and 'coefficients'.")
    names, coefs = value.get("features"), value.get("coefficients")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in FEATURES for n in names):
        raise MaeDetError(f"{where}: 'features' must be a list drawn from {sorted(FEATURES)}.")
    if len(set(names)) != len(names):
        raise MaeDetError(f"{where}: 'features' names a feature twice.")
    if not isinstance(coefs, list) or len(coefs) != len(names) or not all(table_number(c) and c >= 0 for c in coefs):
        raise MaeDetError(
            f"{where}: 'coefficients' must hold one non-negative number {BOUND} per feature ({len(names)})."
        )
    return Phase(tuple(names), tuple(float(c) for c in coefs))


def fit_memory_model(
    structures: Sequence[Structure],
    measured: Mapping[str, Sequence[float]],
    batch: int,
    input_size: int,
    channel_block: int,
) -> MemoryModel:
    """Each phase of PHASE_FEATURES fitted on its measured MiB (``measured[phase]``, one per structure)."""
    rows = [memory_features(s, input_size, batch, channel_block) for s in structures]
    return MemoryModel(fit_phases(rows, measured), batch, input_size, channel_block)


def fit_phases(rows: Sequence[Mapping[str, float]], measured: Mapping[str, Sequence[float]]) -> dict[str, Phase]:
    """Each phase of PHASE_FEATURES fitted on its measured MiB (``measured[phase]``, one per row of features) by
    non-negative least squares on relative error (the goal is stated in percent; a negative coefficient would make
    a bigger network need less)."""
    from scipy.optimize import nnls

    if len(rows) < MIN_FIT_NETWORKS:
        raise MaeDetError(f"a memory model needs at least {MIN_FIT_NETWORKS} measured networks, got {len(rows)}.")
    phases: dict[str, Phase] = {}
    for name, features in PHASE_FEATURES.items():
        y = np.asarray(measured[name], dtype=np.float64)
        if len(y) != len(rows) or not np.all(y > 0):
            raise MaeDetError(f"the memory model's {name} phase needs one positive MiB per network.")
        x = np.asarray([[row[f] for f in features] for row in rows])
        coefs, _ = nnls(x / y[:, None], np.ones_like(y))
        phases[name] = Phase(features, tuple(float(c) for c in coefs))
    return phases


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
