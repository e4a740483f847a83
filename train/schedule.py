"""The learning-rate schedule: mmcv's linear warm-up from a ratio of the rate, then steps at given epochs.

The rate at iteration ``it`` (counted from 0 over the whole run) in epoch ``e`` is
``base · gamma^(number of steps ≤ e) · w(it)`` with ``w(it) = 1 − (1 − it / warmup_iters) · (1 − ratio)`` while
``it < warmup_iters`` and 1 after, as the authors' mmcv 1.2 runner computes it.
"""

from __future__ import annotations

import bisect

import torch

from .recipe import Recipe

__all__ = ["lr_factor", "make_scheduler"]


def lr_factor(iteration: int, iters_per_epoch: int, recipe: Recipe) -> float:
    """The multiplier of the base rate at ``iteration`` (steps decide by epoch, the warm-up by iteration)."""
    epoch = iteration // max(1, iters_per_epoch)
    factor = recipe.gamma ** bisect.bisect_right(recipe.steps, epoch)
    if iteration < recipe.warmup_iters:
        factor *= 1 - (1 - iteration / recipe.warmup_iters) * (1 - recipe.warmup_ratio)
    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, iters_per_epoch: int, recipe: Recipe
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (call ``step()`` after every optimiser step); its state resumes exactly."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, recipe))
