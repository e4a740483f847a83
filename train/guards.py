"""Refusals made before a run starts, so that a bad request costs seconds and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.memory import check_fits, forward_peak_bytes

from .recipe import Recipe

__all__ = ["TRAIN_MEMORY_FACTOR", "check_amp", "check_memory", "check_out_folder"]

# Backward needs the saved activations again as gradients, and the optimiser holds weights, gradients and momentum:
# about twice the forward's peak with autograd saving every activation (assumed, not measured).
TRAIN_MEMORY_FACTOR = 2.0
RUN_MARKERS = ("settings.json", "last.pt", "metrics.jsonl")


def check_amp(amp: str | None, device: torch.device) -> None:
    if amp is not None and device.type != "cuda":
        raise MaeDetError(f"--amp {amp} needs a CUDA device; this run is on the CPU, where it trains in fp32.")


def check_out_folder(out: Path, resume: bool) -> None:
    """A new run needs an empty or new folder; another run's folder is only continued with --resume."""
    if out.exists() and not out.is_dir():
        raise MaeDetError(f"--out {str(out)!r} exists and is not a folder.")
    if resume:
        return
    if out.is_dir() and any(out.iterdir()):
        held = [name for name in RUN_MARKERS if (out / name).exists()]
        what = f"another training run ({', '.join(held)})" if held else "other files"
        raise MaeDetError(
            f"--out {str(out)!r} already holds {what}; continue it with --resume {str(out)!r} or choose a new folder."
        )
    if not out.parent.is_dir():
        raise MaeDetError(f"cannot write --out {str(out)!r}: the folder {str(out.parent)!r} does not exist.")


def _with_grad(module: nn.Module, example: torch.Tensor) -> None:
    """A training forward on meta tensors: parameters require grad, so autograd keeps what backward needs."""
    trainable = {name for name, _ in module.named_parameters()}
    params = {k: torch.empty_like(v, device="meta").requires_grad_(k in trainable)
              for k, v in module.state_dict(keep_vars=True).items()}  # fmt: skip
    with torch.enable_grad():
        outputs = torch.func.functional_call(module, params, (example,))
        del outputs


def check_memory(detector: nn.Module, recipe: Recipe, available: int | None = None) -> int:
    """Estimate the largest training step (batch at the largest train size) and refuse one that cannot fit."""
    long_side = min(recipe.long_max, 32 * -(-recipe.short_range[1] * 2 // 32))
    shape = (recipe.batch_per_process, 3, 32 * -(-recipe.short_range[1] // 32), 32 * -(-long_side // 32))
    was_training = detector.training
    detector.train()
    try:
        needed = int(forward_peak_bytes(detector, shape, call=_with_grad) * TRAIN_MEMORY_FACTOR)
    finally:
        detector.train(was_training)
    check_fits(needed, f"training at {shape[0]}×3×{shape[2]}×{shape[3]} per process", available)
    return needed
