"""Reading untrusted checkpoints without running any code from them.

A ``.pth`` file is a pickle, and a pickle may name any Python function to call while it loads. So checkpoints are
read as safetensors or with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
mmdetection's checkpoints also keep numpy scalars (and their dtypes) in ``meta``: those types are allow-listed with
torch's safe-globals mechanism, which admits exactly the named classes and still runs nothing else. A file that
names anything more is refused in one sentence that names what it tried to load (``posix.system`` and the like).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maedet.errors import MaeDetError

__all__ = ["CheckpointError", "load_checkpoint", "safe_numpy_globals"]

_GLOBAL_RE = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")
_REASON_MARKER = "WeightsUnpickler error:"


class CheckpointError(MaeDetError):
    """A checkpoint that is missing, unreadable, unsafe, or not a state dict."""


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def safe_numpy_globals() -> list[Any]:
    """numpy scalars, ``numpy.dtype`` and its per-type classes, under both numpy 1 and numpy 2 module names.

    Files written under numpy 1 name the scalar constructor ``numpy.core.multiarray.scalar``; under numpy 2 it is
    ``numpy._core.multiarray.scalar``. Object dtypes are left out: nothing in a state dict's metadata needs them.
    """
    scalar = _numpy_scalar()
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"] if code != "O"}
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *sorted(dtype_classes, key=lambda cls: cls.__name__),
    ]


def _blocked_globals(path: Path, message: str) -> list[str]:
    """The globals a refused file names, found without executing it: torch's opcode scan, then torch's message."""
    try:
        with torch.serialization.safe_globals(safe_numpy_globals()):
            found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, OSError, KeyError):  # legacy format or garbage: torch's message is all there is
        found = []
    return found + [name for name in dict.fromkeys(_GLOBAL_RE.findall(message)) if name not in found]


def _reason(exc: BaseException) -> str:
    """One short line out of torch's multi-paragraph load errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if _REASON_MARKER in line:
            tail = line.split(_REASON_MARKER, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return tail[:200].rstrip(".")
    return (lines[0] if lines else type(exc).__name__)[:200].rstrip(".")


def _refusal(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    blocked = _blocked_globals(path, str(exc))
    if blocked:
        return CheckpointError(
            f"checkpoint {path.name} was refused: it contains code-executing objects ({', '.join(blocked)}), which "
            "would run when loaded; only tensors, plain containers and numpy scalars are accepted from untrusted files."
        )
    return CheckpointError(
        f"checkpoint {path.name} was refused: it does not load as plain weights with weights_only=True "
        f"({_reason(exc)}); only tensors and plain containers are accepted from untrusted files."
    )


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path.name} is not a readable safetensors file ({exc}).") from None


def _load_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(safe_numpy_globals()):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on its way to refusing them
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path.name} is not a readable PyTorch checkpoint ({_reason(exc)})."
        ) from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or a pickle restricted to tensors, plain containers and numpy scalars."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    checkpoint = _load_pickle(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path.name} holds a {type(checkpoint).__name__}, not a state dict.")
    return checkpoint
