"""The learning-rate schedule: mmcv's linear warm-up from a ratio of the rate, then steps at given epochs; and the
plan that fits those epochs and steps into a time budget (``--max-minutes``), as Ultralytics' ``time`` does.

The rate at iteration ``it`` (counted from 0 over the whole run) in epoch ``e`` is
``base · gamma^(number of steps ≤ e) · w(it)`` with ``w(it) = 1 − (1 − it / warmup_iters) · (1 − ratio)`` while
``it < warmup_iters`` and 1 after, as the authors' mmcv 1.2 runner computes it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import replace

import torch

from .recipe import Recipe

__all__ = ["continue_plan", "fit_to_minutes", "lr_factor", "make_scheduler"]


def lr_factor(iteration: int, iters_per_epoch: int, recipe: Recipe) -> float:
    """The multiplier of the base rate at ``iteration`` (steps decide by epoch, the warm-up by iteration)."""
    epoch = iteration // max(1, iters_per_epoch)
    factor = recipe.gamma ** bisect.bisect_right(recipe.steps, epoch)
    if iteration < recipe.warmup_iters:
        factor *= 1 - (1 - iteration / recipe.warmup_iters) * (1 - recipe.warmup_ratio)
    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, iters_per_epoch: int, recipe: Callable[[], Recipe]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (call ``step()`` after every optimiser step); its state resumes exactly.

    ``recipe`` is asked at every step, so a plan fitted to ``--max-minutes`` moves the steps of a running schedule.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, recipe()))


def _keep_passed_steps(wanted: tuple[int, ...], current: Recipe, epochs_done: int) -> tuple[int, ...]:
    """``wanted`` steps, except that a step which already lowered the rate of an epoch stays (the rate never rises
    again) and a coming one is never placed before the next epoch."""
    return tuple(
        now if now < epochs_done else max(epochs_done, 1, step) for step, now in zip(wanted, current.steps, strict=True)
    )


def fit_to_minutes(recipe: Recipe, current: Recipe, epochs_done: int, seconds: float, minutes: float) -> Recipe:
    """``current`` with the epochs that fit ``minutes`` at the mean epoch time so far, and the recipe's lr steps
    scaled to them.

    The steps keep their fractions of the run (the demo's 9 and 10 of 11 stay at 82% and 91%), so the decays happen
    on any machine instead of being cut off by the time limit. No plan is shorter than the epochs done.
    """
    mean_epoch_s = seconds / max(epochs_done, 1)
    epochs = max(epochs_done, 1, math.floor(minutes * 60 / max(mean_epoch_s, 1e-9)))
    wanted = tuple(round(step * epochs / recipe.epochs) for step in recipe.steps)
    return replace(current, epochs=epochs, steps=_keep_passed_steps(wanted, current, epochs_done))


def continue_plan(recipe: Recipe, current: Recipe, epochs_done: int) -> Recipe:
    """Resuming a run whose time-fitted plan is done: the recipe's epochs again, the steps already taken kept."""
    return replace(current, epochs=recipe.epochs, steps=_keep_passed_steps(recipe.steps, current, epochs_done))
