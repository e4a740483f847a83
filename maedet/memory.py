"""Will this run fit in memory? An estimate made before any real tensor of the requested size exists.

``--input-size 8192 8192`` used to grow past 8 GB without a word (issue 12.4). The estimate runs the model once
on the *meta* device (shapes only, no data, no compute) at the requested size and follows every tensor PyTorch
creates and frees, so the peak of live activations is what eager PyTorch would hold, whatever the architecture.
The limit is the memory this process may still take: the kernel's ``MemAvailable``, a cgroup limit, and the
address-space limit (``RLIMIT_AS``), whichever is lowest.

Weights and buffers count too (issue 17: a detector config with ``fpn_channels`` 2^20 asked for terabytes of
weights before any input existed): :func:`check_build_fits` builds a module on the meta device first and refuses
it when its parameters and buffers cannot fit, and the run estimates add :func:`state_bytes` to the activations.
"""

from __future__ import annotations

import contextlib
import os
import resource
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

# Private torch names with no public home (the extending-torch notes document TorchDispatchMode from here); imported
# in this module only (tests/test_layers.py), and torch is pinned by the Makefile.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .errors import MaeDetError

__all__ = [
    "MemoryEstimateError",
    "available_memory_bytes",
    "check_build_fits",
    "check_fits",
    "check_weights_fit",
    "forward_peak_bytes",
    "gib",
    "state_bytes",
]


class MemoryEstimateError(MaeDetError):
    """The requested run needs more memory than this process can get (one sentence with both figures)."""


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (None when unlimited or not in a cgroup)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    """What ``RLIMIT_AS`` leaves above this process's current virtual size."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return soft


def available_memory_bytes() -> int | None:
    """The lowest of MemAvailable, the cgroup's room and the address-space room; None when none is known."""
    known = [v for v in (_meminfo_available(), _cgroup_room(), _address_space_room()) if v is not None]
    if not known and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            known.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(known) if known else None


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of every new tensor an op creates and releases them when the tensor dies; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # views and in-place results: no new memory
            return out
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor):
                nbytes = value.numel() * value.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(value, self._release, nbytes)
        return out


def forward_peak_bytes(
    module: nn.Module, input_shape: tuple[int, ...], call: Callable[[nn.Module, torch.Tensor], Any] | None = None
) -> int:
    """Peak bytes of live activations (input included) of one no-grad forward at ``input_shape``, on meta tensors.

    The module's own weights are replaced by meta stand-ins for the run (``torch.func.functional_call``), so
    neither the module nor any real memory is touched, and the answer comes in milliseconds even for 8192×8192.
    """
    stand_ins = {name: torch.empty_like(t, device="meta") for name, t in module.state_dict(keep_vars=True).items()}
    counter = _LiveBytes()
    with torch.no_grad(), counter:
        example = torch.empty(input_shape, device="meta")
        if call is None:
            torch.func.functional_call(module, stand_ins, (example,))
        else:
            call(module, example)
        del example
    return counter.peak


def check_fits(needed: int, what: str, available: int | None = None) -> None:
    """Refuse in one sentence a run whose estimate exceeds the memory this process can still get."""
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        raise MemoryEstimateError(
            f"{what} needs about {gib(needed)} of memory (estimated before running), but only {gib(available)} "
            "is available to this process; use a smaller input size or batch."
        )


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (meta tensors count by their shapes, so nothing is allocated)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_build_fits(build: Callable[[], nn.Module], what: str, available: int | None = None) -> int:
    """Build the module on the meta device (shapes only) and refuse, in one sentence, weights that cannot fit.

    Returns the weights' bytes. ``build`` must not load files or download: it runs once more for real afterwards.
    """
    with torch.device("meta"):
        needed = state_bytes(build())
    return check_weights_fit(needed, what, available)


def check_weights_fit(needed: int, what: str, available: int | None = None) -> int:
    """Refuse, in one sentence, ``needed`` bytes of weights (counted from shapes) that cannot fit; returns them."""
    available = available_memory_bytes() if available is None else available
    if available is not None and needed > available:
        raise MemoryEstimateError(
            f"{what} has about {gib(needed)} of weights (counted before building it), but only {gib(available)} "
            "of memory is available to this process; check its widths (channels, bins) and class count."
        )
    return needed
