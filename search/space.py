"""The search space: a light integer genome of a Structure, its mutation and constraints (docs/design.md §4).

The search mutates tuples, not Structures: a genome is ``(stem_out, out_1, k_1, L_1, btn_1, out_2, ...)`` and the
fixed parts (input channels, stem kernel and strides) live in the ``SearchSpace``. ``decode`` turns a genome back
into a validated Structure; the tuple form only exists so that the hot loop stays cheap.

Mutation picks one block (every block, the last included) and one of its fields:

* channels (the stem's ``out``, a stage's ``out`` or ``btn``) × one of {1.5, 1.25, 0.8, 0.6, 0.5}, rounded to a
  multiple of 8, within [8, 2048];
* ``L`` ± {1, 2}, at least 1, the first stage at most 3;
* ``k`` flips between 3 and 5, never above the largest kernel the feature size allows (k·1.5 ≤ feature size).

Constraints, applied by clipping the mutated value (as the authors do) and rejecting the mutation when the legal
interval is empty or nothing changes: for every stage in ≤ out ≤ 4·in (so a block's ``out`` also stays within
[next out / 4, next out]), and out/10 ≤ btn ≤ out (``btn`` follows its stage's ``out``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property

from maedet.zoo import Stage, Stem, Structure

from .errors import SearchError

__all__ = ["GENOME_ID_BYTES", "Genome", "SearchSpace", "genome_id"]

Genome = tuple[int, ...]
GENOME_ID_BYTES = 32  # a SHA-256 digest


def genome_id(genome: Genome) -> bytes:
    """A genome's stored identity: SHA-256 of its genes as decimal text (the same in every process and interpreter,
    unlike ``hash()``, and collision-free in practice, so a seen set never drops a new candidate)."""
    return hashlib.sha256(",".join(map(str, genome)).encode("ascii")).digest()


CHANNEL_RATIOS: tuple[float, ...] = (1.5, 1.25, 0.8, 0.6, 0.5)
DEPTH_STEPS: tuple[int, ...] = (-2, -1, 1, 2)
KERNELS: tuple[int, ...] = (3, 5)
STAGE_FIELDS = ("out", "k", "L", "btn")
_FIELD_OFFSET = {"out": 0, "k": 1, "L": 2, "btn": 3}


def round8(value: float) -> int:
    """Nearest multiple of 8, at least 8."""
    return max(8, round(value / 8.0) * 8)


def _pick(rng: random.Random, n: int) -> int:
    """A uniform index below n; ``int(random() * n)`` is a few times cheaper than ``randrange`` in the hot loop."""
    return int(rng.random() * n)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class SearchSpace:
    """Everything a search keeps fixed: input channels, stem kernel and stride, the stage strides, the resolution
    that limits kernels, and the mutation settings."""

    stem_in: int
    stem_kernel: int
    stem_stride: int
    strides: tuple[int, ...]
    resolution: int = 480
    max_channels: int = 2048
    first_stage_max_depth: int = 3
    btn_min_ratio: int = 10

    @classmethod
    def from_structure(cls, structure: Structure, resolution: int = 480) -> SearchSpace:
        stem = structure.stem
        return cls(stem.in_chs, stem.kernel_size, stem.stride, tuple(s.stride for s in structure.stages), resolution)

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @cached_property
    def max_kernels(self) -> tuple[int, ...]:
        """Per stage, the largest odd kernel with k·1.5 ≤ the stage's input feature size (the authors' rule)."""
        size = -(-self.resolution // self.stem_stride)
        caps = []
        for stride in self.strides:
            k = max(KERNELS)
            while k > 1 and k * 1.5 > size:
                k -= 2
            caps.append(k)
            size = -(-size // stride)
        return tuple(caps)

    # ------------------------------------------------------------------ conversion
    def encode(self, structure: Structure) -> Genome:
        stem = structure.stem
        fixed = (stem.in_chs, stem.kernel_size, stem.stride, tuple(s.stride for s in structure.stages))
        if fixed != (self.stem_in, self.stem_kernel, self.stem_stride, self.strides):
            raise SearchError("structure: its input channels, stem kernel or strides differ from the search space's.")
        genes = [structure.stem.out_chs]
        for s in structure.stages:
            genes += [s.out_chs, s.kernel_size, s.depth, s.bottleneck_chs]
        return tuple(genes)

    def decode(self, genome: Genome) -> Structure:
        stem = Stem(self.stem_in, genome[0], self.stem_stride, self.stem_kernel)
        stages = []
        prev = genome[0]
        for j, stride in enumerate(self.strides):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            stages.append(Stage(prev, out, stride, k, depth, btn, index=j + 1))
            prev = out
        return Structure(stem, tuple(stages))

    # ------------------------------------------------------------------ constraints
    def violations(self, genome: Genome) -> list[str]:
        """Every constraint the genome breaks (an empty list for a structure inside the space)."""
        problems = []
        prev = genome[0]
        caps = self.max_kernels
        if not 8 <= genome[0] <= self.max_channels:
            problems.append(f"stem out {genome[0]} outside [8, {self.max_channels}]")
        for j in range(self.num_stages):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            where = f"stage {j + 1}"
            if not prev <= out <= 4 * prev:
                problems.append(f"{where}: out {out} not within [in, 4·in] = [{prev}, {4 * prev}]")
            if not 8 <= out <= self.max_channels:
                problems.append(f"{where}: out {out} outside [8, {self.max_channels}]")
            if not out <= btn * self.btn_min_ratio or btn > out:
                problems.append(f"{where}: btn {btn} not within [out/{self.btn_min_ratio}, out]")
            if k not in KERNELS or k > caps[j]:
                problems.append(f"{where}: kernel {k} not in {KERNELS} or above the feature-size limit {caps[j]}")
            if depth < 1 or (j == 0 and depth > self.first_stage_max_depth):
                problems.append(f"{where}: depth {depth} outside its range")
            prev = out
        return problems

    def _out_interval(self, genome: Genome, block: int) -> tuple[int, int]:
        """Legal [low, high] for the ``out`` of block ``block`` (0 = stem), given its neighbours."""
        low, high = 8, self.max_channels
        if block >= 1:
            prev = genome[0] if block == 1 else genome[1 + 4 * (block - 2)]
            low, high = max(low, prev), min(high, 4 * prev)
        if block < self.num_stages:
            nxt = genome[1 + 4 * block]
            low, high = max(low, 8 * _ceil_div(_ceil_div(nxt, 4), 8)), min(high, nxt)
        return low, high

    # ------------------------------------------------------------------ mutation
    def mutate(self, genome: Genome, rng: random.Random) -> Genome | None:
        """One random mutation of one random block; None when it is illegal or changes nothing."""
        block = _pick(rng, self.num_stages + 1)
        genes = list(genome)
        if block == 0:
            field = "out"
            pos = 0
        else:
            field = STAGE_FIELDS[_pick(rng, 4)]
            pos = 1 + 4 * (block - 1) + _FIELD_OFFSET[field]
        old = genes[pos]
        if field == "out":
            low, high = self._out_interval(genome, block)
            if low > high:
                return None
            new = min(max(round8(old * CHANNEL_RATIOS[_pick(rng, 5)]), low), high)
            genes[pos] = new
            if block >= 1:  # btn follows its stage's out
                genes[pos + 3] = min(max(genes[pos + 3], self._btn_low(new)), new)
        elif field == "btn":
            out = genes[pos - 3]
            new = min(max(round8(old * CHANNEL_RATIOS[_pick(rng, 5)]), self._btn_low(out)), out)
            genes[pos] = new
        elif field == "L":
            new = max(1, old + DEPTH_STEPS[_pick(rng, 4)])
            if block == 1:
                new = min(new, self.first_stage_max_depth)
            genes[pos] = new
        else:  # k
            new = KERNELS[1] if old == KERNELS[0] else KERNELS[0]
            if new > self.max_kernels[block - 1]:
                return None
            genes[pos] = new
        child = tuple(genes)
        return None if child == genome else child

    def _btn_low(self, out: int) -> int:
        """Smallest multiple of 8 that is at least out / btn_min_ratio."""
        return max(8, 8 * _ceil_div(out, 8 * self.btn_min_ratio))
