"""The zero-shot maximum-entropy score of a Structure (docs/design.md §3).

Two ways to measure the same quantity: the closed form (the authors' later code), which needs no tensors and is
what the search uses, and the paper's forward score, which runs the plain network (convs only) on Gaussian noise.
Both return per-level scores for the stem and the detection features C2..C5; the multi-scale score weights them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from maedet.devices import parse_device
from maedet.zoo import Structure, feature_levels

from .errors import SearchError

__all__ = [
    "DEFAULT_RATIOS",
    "ScoreResult",
    "block_log_stds",
    "check_forward_memory",
    "check_ratios",
    "closed_form_score",
    "forward_score",
    "forward_score_bytes",
    "score_levels",
    "stride_levels",
]

DEFAULT_RATIOS: tuple[float, ...] = (0.0, 0.0, 1.0, 1.0, 6.0)


@dataclass(frozen=True)
class ScoreResult:
    """The multi-scale score and the level scores it was weighted from (keys: 'stem', 'c2', ..., 'c5')."""

    score: float
    stage_scores: dict[str, float]


def stride_levels(strides: Sequence[int]) -> list[tuple[str, int]]:
    """(name, block index) of each scored level of blocks with these strides (stem first): the stem, then every
    detection feature (the zoo's rule, :func:`maedet.zoo.feature_levels`)."""
    return [("stem", 0)] + [(name, index) for name, index, _ in feature_levels(strides)]


def score_levels(structure: Structure) -> list[tuple[str, int]]:
    """(name, block index) of each scored level: the stem, then every detection feature point.

    A stride-1 stage belongs to the level of the stride-2 stage before it: its blocks count in that level's
    cumulative sum (this is what makes the R50-like init score 400.726108, docs/design.md §2).
    """
    return stride_levels([block.stride for block in structure.blocks])


def check_ratios(ratios: Sequence[float], levels: Sequence[tuple[str, int]]) -> None:
    """One ratio per level, or one sentence saying how many there are and which."""
    if len(ratios) != len(levels):
        names = ", ".join(name for name, _ in levels)
        raise SearchError(
            f"the score ratios have {len(ratios)} values but the structure has {len(levels)} levels ({names})."
        )


def _check_ratios(structure: Structure, ratios: Sequence[float]) -> list[tuple[str, int]]:
    levels = score_levels(structure)
    check_ratios(ratios, levels)
    return levels


def block_log_stds(structure: Structure) -> list[float]:
    """Closed-form log-std of every block: a conv with fan-in c·k² turns unit variance into variance c·k²."""
    stem = structure.stem
    out = [0.5 * math.log(stem.in_chs * stem.kernel_size**2)]
    for stage in structure.stages:
        btn, k = stage.bottleneck_chs, stage.kernel_size
        body = math.log(btn * k * k) + math.log(btn)  # k×k conv and the 1×1 expand; the 1×1 reduce adds log(in)
        first = math.log(stage.in_chs) + body
        rest = math.log(stage.out_chs) + body
        out.append(0.5 * (first + (stage.depth - 1) * rest))
    return out


def _combine(
    structure: Structure, blocks: Sequence[float], levels: list[tuple[str, int]], ratios: Sequence[float]
) -> ScoreResult:
    cumulative: list[float] = []
    total = 0.0
    for value in blocks:
        total += value
        cumulative.append(total)
    chs = [b.out_chs for b in structure.blocks]
    stage_scores = {name: cumulative[i] + math.log(chs[i]) for name, i in levels}
    score = sum(float(r) * stage_scores[name] for r, (name, _) in zip(ratios, levels, strict=True))
    return ScoreResult(score, stage_scores)


def closed_form_score(structure: Structure, ratios: Sequence[float] = DEFAULT_RATIOS) -> ScoreResult:
    """The multi-scale score without building anything (docs/design.md §3); independent of input resolution."""
    levels = _check_ratios(structure, ratios)
    return _combine(structure, block_log_stds(structure), levels, ratios)


class _PlainConv:
    """A bias-free conv with fresh N(0, 1) weights whose output is rescaled to unit std; returns log(std)."""

    def __init__(self, gen, device) -> None:
        self.gen, self.device = gen, device
        self.buffers: dict[tuple[int, int, int], object] = {}  # one weight buffer per shape, refilled in place

    def __call__(self, x, out_chs: int, kernel: int, stride: int):
        import torch
        import torch.nn.functional as F

        shape = (out_chs, x.shape[1], kernel)
        buf = self.buffers.get(shape)
        if buf is None:
            buf = self.buffers[shape] = torch.empty(out_chs, x.shape[1], kernel, kernel, device=self.device)
        buf.normal_(generator=self.gen)
        y = F.conv2d(x, buf, stride=stride, padding=(kernel - 1) // 2)
        std = y.std()
        y.div_(std)
        return y, math.log(float(std))


def forward_score_bytes(structure: Structure, batch: int, resolution: int) -> int:
    """Memory the forward score needs, from shapes alone: the largest conv's input and output (float32, plus the
    std's temporary of the output's size) and every distinct weight buffer it keeps (at most all the weights)."""
    side = resolution
    layers: list[tuple[int, int, int]] = []  # (input elements per image, output elements per image, weights)
    stem = structure.stem
    out = -(-side // stem.stride)
    layers.append(
        (stem.in_chs * side * side, stem.out_chs * out * out, stem.in_chs * stem.out_chs * stem.kernel_size**2)
    )
    side = out
    for stage in structure.stages:
        out = -(-side // stage.stride)
        mid, k = stage.bottleneck_chs, stage.kernel_size
        layers.append((stage.in_chs * side * side, mid * side * side, stage.in_chs * mid))
        layers.append((mid * side * side, mid * out * out, mid * mid * k * k))
        layers.append((mid * out * out, stage.out_chs * out * out, mid * stage.out_chs))
        side = out
    activations = max(i + 2 * o for i, o, _ in layers) * batch
    return 4 * (activations + sum(w for _, _, w in layers))


def check_forward_memory(structure: Structure, batch: int, resolution: int) -> None:
    """Refuse in one sentence a forward score that cannot fit in memory (before any tensor exists)."""
    from maedet.memory import MemoryEstimateError, check_fits

    try:
        check_fits(forward_score_bytes(structure, batch, resolution), f"the forward score at {batch}×{resolution}²")
    except MemoryEstimateError as exc:
        raise SearchError(f"{str(exc).rstrip('.')} (--forward-batch-size, --forward-resolution).") from None


def forward_score(
    structure: Structure,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    batch: int = 8,
    resolution: int = 224,
    repeats: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> ScoreResult:
    """The paper's score: run the plain network (convs only, N(0,1) weights and input) and sum log-stds.

    After every conv the output's std is recorded and the output divided by it (Zen-NAS rescaling), so values
    never overflow. Level scores are averaged over ``repeats`` independent draws (seeds ``seed + r``).
    """
    import torch

    levels = _check_ratios(structure, ratios)
    if batch < 1 or resolution < 1 or repeats < 1:
        raise SearchError("forward score: batch, resolution and repeats must all be at least 1.")
    check_forward_memory(structure, batch, resolution)
    dev = torch.device(parse_device(device))
    sums = [0.0] * len(structure.blocks)
    with torch.inference_mode():
        for r in range(repeats):
            gen = torch.Generator(device=dev).manual_seed(seed + r)
            conv = _PlainConv(gen, dev)
            x = torch.randn(batch, structure.stem.in_chs, resolution, resolution, generator=gen, device=dev)
            stem = structure.stem
            x, log_std = conv(x, stem.out_chs, stem.kernel_size, stem.stride)
            sums[0] += log_std
            for j, stage in enumerate(structure.stages, start=1):
                for i in range(stage.depth):
                    stride = stage.stride if i == 0 else 1
                    x, a = conv(x, stage.bottleneck_chs, 1, 1)
                    x, b = conv(x, stage.bottleneck_chs, stage.kernel_size, stride)
                    x, c = conv(x, stage.out_chs, 1, 1)
                    sums[j] += a + b + c
    return _combine(structure, [s / repeats for s in sums], levels, ratios)
