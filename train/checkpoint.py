"""The training state on disk: everything ``--resume`` needs to continue exactly, written atomically.

One file per epoch end (``last.pt``, and ``best.pt`` for the best val AP): model, optimiser, scheduler, grad scaler,
EMA weights, every random generator's state and the sampler's position (epoch and batches done in it). Plain
tensors and containers only, so it reads back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maedet.errors import MaeDetError
from maedet.fileio import atomic_output

__all__ = ["BEST", "LAST", "capture_rng", "load_state", "restore_rng", "save_state"]

LAST, BEST = "last.pt", "best.pt"


def capture_rng() -> dict[str, Any]:
    """The state of torch's, numpy's and Python's global generators (numpy's as a tensor, for weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file: a reader never sees half a checkpoint."""
    with atomic_output(path, "checkpoint") as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_state`, read with ``weights_only=True``."""
    if not path.is_file():
        raise MaeDetError(f"there is no training checkpoint {str(path)!r} to resume from.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many kinds
        raise MaeDetError(f"cannot read the training checkpoint {str(path)!r} ({type(exc).__name__}).") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise MaeDetError(f"{str(path)!r} is not a maedet-train checkpoint.")
    return state
