"""The vocabulary every latency predictor shares: a backbone as pieces, and a piece as operators.

A backbone of the search space is a stem and stages; a stage is a first block (strided, with a projection shortcut)
and ``depth - 1`` identical identity blocks. A :class:`Piece` is one of those three units at one input size, so a
predictor that prices pieces prices any backbone, and the search's hot path (``maedet.search.latency``) can price a
genome stage by stage. An :class:`Op` is one operator of a piece in the role a profiled table fits a model for.
Plain numpy: no torch or runtime import here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..structure import Structure

__all__ = [
    "ELEMENTWISE_ROLES",
    "FEATURE_NAMES",
    "NMS_PRE",
    "Op",
    "Piece",
    "conv_count",
    "conv_role",
    "op_features",
    "out_size",
    "piece_ops",
    "post_features",
    "regime_key",
    "structure_pieces",
]

FEATURE_NAMES = ("macs", "in_elems", "out_elems", "weight_elems", "overhead")
# A whole detector's operators beyond the convs (zoo/latency/detector.py): GroupNorm + ReLU of a head tower, the
# FPN's upsample + add, the head's per-level arithmetic (softmax, top-k, quality, integral), and the postprocess.
ELEMENTWISE_ROLES = ("gn", "upadd", "headmisc")
NMS_PRE = 1000  # points per level kept before NMS (the authors' test config, and the bench's detectors)


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
        return out_size(self.size, self.stride)


def out_size(size: int, stride: int) -> int:
    """A feature map's side after a padded conv or pool of this stride (``ceil(size / stride)``)."""
    return (size - 1) // stride + 1


def regime_key(role: str, size: int) -> str:
    """The name of a role's model at one input feature size in a table (``pw@160``)."""
    return f"{role}@{size}"


def conv_role(kernel_size: int, stride: int) -> str:
    return "pw" if kernel_size == 1 and stride == 1 else f"k{kernel_size}s{stride}"


def structure_pieces(structure: Structure, input_size: int) -> list[tuple[Piece, int]]:
    """The distinct pieces of a structure with their counts, at a square input of ``input_size``."""
    stem = structure.stem
    pieces: list[tuple[Piece, int]] = [
        (Piece("stem", stem.in_chs, stem.out_chs, stem.kernel_size, stem.stride, input_size), 1)
    ]
    size = out_size(input_size, stem.stride)
    for st in structure.stages:
        pieces.append((Piece("first", st.in_chs, st.out_chs, st.kernel_size, st.stride, size, st.bottleneck_chs), 1))
        size = out_size(size, st.stride)
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
    h_out = out_size(h, s)
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
    if op.role == "post":
        return post_features(op, batch)
    c_in = op.in_chs if op.role == "stem" else _up(op.in_chs, channel_block)
    c_out = _up(op.out_chs, channel_block)
    p_in, p_out = op.size * op.size, op.out_size * op.out_size
    if op.role in ELEMENTWISE_ROLES:  # a detector's GroupNorm + ReLU, upsample + add, head arithmetic: no MACs
        macs, weights, reads = 0.0, 0.0, p_in * c_in * (2 if op.role == "upadd" else 1)
    elif op.role == "pool":
        macs, weights, reads = 0.0, 0.0, p_in * c_in
    elif op.role == "add":
        macs, weights, reads = 0.0, 0.0, 2 * p_out * c_out
    else:
        k2 = op.kernel_size * op.kernel_size
        macs, weights, reads = float(p_out * c_in * c_out * k2), float(c_in * c_out * k2), p_in * c_in
    return np.asarray([macs * batch, reads * batch, p_out * c_out * batch, weights, 1.0], dtype=np.float64)


def post_features(op: Op, batch: int = 1) -> np.ndarray:
    """Cost features of a detector's postprocess at input side ``op.size`` over ``op.kernel_size`` levels (strides
    8, 16, …) with ``op.in_chs`` class channels: the scores each level's top-k reads (its points plus the NMS_PRE
    padding rows), the candidates' scores NMS and the final top-k read, and the squared candidate count as the
    "MACs" (NMS compares candidates pairwise; every kept point is a candidate in the bench's fixed workload)."""
    sizes, size = [], op.size
    for level in range(op.kernel_size):
        size = out_size(size, 8 if level == 0 else 2)
        sizes.append(size * size)
    candidates = float(sum(min(p, NMS_PRE) for p in sizes))
    reads = float(sum(p + NMS_PRE for p in sizes) * op.in_chs)
    dense = float(op.kernel_size * NMS_PRE * op.in_chs)
    return np.asarray([candidates**2 * batch, reads * batch, dense * batch, 0.0, 1.0], dtype=np.float64)
