"""Hot-path twins of the zoo's cost functions and of the closed-form score, computed on genomes.

The search evaluates ~10⁵ candidates; building a Structure (validated dataclasses) for each costs more than the
arithmetic itself. These functions do the same integer arithmetic as ``maedet.zoo.cost`` and the same sums as
``closed_form_score`` on plain tuples, with a stage's blocks summed in closed form instead of a loop. Tests check
that they agree with the zoo (costs exactly, scores to 1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .score import check_ratios, stride_levels
from .space import Genome, SearchSpace

__all__ = ["GenomeEvaluator"]


def _out(size: int, stride: int) -> int:
    # odd kernels with padding (k-1)//2 keep the size at stride 1 and give ceil(size/2) at stride 2
    return (size - 1) // stride + 1


@dataclass
class GenomeEvaluator:
    """Cost figures and the closed-form score of genomes of one search space."""

    space: SearchSpace
    ratios: Sequence[float]

    def __post_init__(self) -> None:
        levels = stride_levels((self.space.stem_stride, *self.space.strides))
        check_ratios(self.ratios, levels)
        self.level_blocks = [block for _, block in levels]

    # ------------------------------------------------------------------ score
    def block_log_stds(self, genome: Genome) -> list[float]:
        sp = self.space
        values = [0.5 * math.log(sp.stem_in * sp.stem_kernel * sp.stem_kernel)]
        prev = genome[0]
        for j in range(sp.num_stages):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            body = math.log(btn * k * k) + math.log(btn)
            values.append(0.5 * ((math.log(prev) + body) + (depth - 1) * (math.log(out) + body)))
            prev = out
        return values

    def level_scores(self, genome: Genome) -> list[float]:
        blocks = self.block_log_stds(genome)
        cumulative = []
        total = 0.0
        for value in blocks:
            total += value
            cumulative.append(total)
        outs = [genome[0]] + [genome[1 + 4 * j] for j in range(self.space.num_stages)]
        return [cumulative[b] + math.log(outs[b]) for b in self.level_blocks]

    def score(self, genome: Genome) -> float:
        levels = self.level_scores(genome)
        return sum(float(r) * s for r, s in zip(self.ratios, levels, strict=True))

    # ------------------------------------------------------------------ cost
    def macs_and_flops(self, genome: Genome, resolution: int) -> tuple[int, int]:
        """(conv MACs, official FLOPs) for one square image, as ``maedet.zoo.cost`` counts them."""
        sp = self.space
        size = _out(resolution, sp.stem_stride)
        pixels = size * size
        stem_out = genome[0]
        conv = pixels * sp.stem_in * stem_out * sp.stem_kernel * sp.stem_kernel
        extra = 3 * stem_out * pixels
        prev = stem_out
        for j, stride in enumerate(sp.strides):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            in_pixels = pixels
            size = _out(size, stride)
            pixels = size * size
            kk = btn * btn * k * k
            # block 0 (with its projection shortcut and, at stride 2, the avgpool)
            conv += in_pixels * prev * btn + pixels * (kk + btn * out + prev * out)
            extra += 3 * btn * in_pixels + pixels * (3 * btn + 2 * out + 3 * out + out)
            if stride == 2:
                extra += prev * in_pixels
            # blocks 1..depth-1
            rest = depth - 1
            conv += rest * pixels * (out * btn + kk + btn * out)
            extra += rest * pixels * (6 * btn + 3 * out)
            prev = out
        return conv, conv + extra

    def params(self, genome: Genome) -> int:
        sp = self.space
        stem_out = genome[0]
        total = sp.stem_in * stem_out * sp.stem_kernel * sp.stem_kernel + 2 * stem_out
        prev = stem_out
        for j in range(sp.num_stages):
            out, k, depth, btn = genome[1 + 4 * j : 5 + 4 * j]
            body = btn * btn * k * k + btn * out + 4 * btn + 2 * out
            total += prev * btn + body + prev * out + 2 * out + (depth - 1) * (out * btn + body)
            prev = out
        return total

    def layers(self, genome: Genome) -> int:
        return 1 + 3 * sum(genome[3 + 4 * j] for j in range(self.space.num_stages))
