"""Refuse, before anything is built at full size, a bench run whose activations and weights cannot fit (issue 12.4, 17).

Each model is built on the meta device (shapes only) and its eager forward followed at every requested input size
and batch (:func:`maedet.memory.forward_peak_bytes`); the largest estimate, times the runs that overlap (the
PyTorch runner and an exported runtime's own buffers), must fit in what this process can still get.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from maedet.memory import MemoryEstimateError, check_fits, forward_peak_bytes, state_bytes

from .errors import BenchError
from .models import ModelSpec, _meta_features_model, meta_detector

__all__ = ["BENCH_MEMORY_FACTOR", "BENCH_WEIGHT_COPIES", "check_bench_memory"]

# The input batch, PyTorch's activations and one runtime's arena can be alive at once (assumed, not measured;
# the exporter's whole pipeline measured 2.3-3.5×, see maedet.export.validate).
BENCH_MEMORY_FACTOR = 2.0
# The model's weights in PyTorch, in the exported file being written and in one runtime's session (issue 17).
BENCH_WEIGHT_COPIES = 3


def _meta_model(spec: ModelSpec) -> nn.Module:
    if spec.detector:
        return meta_detector(spec)
    return _meta_features_model(spec)


def check_bench_memory(
    specs: Sequence[ModelSpec], configs: Sequence[tuple[tuple[int, int], int]], available: int | None = None
) -> None:
    """One sentence naming the model, the input and both figures when the largest run cannot fit (``available``:
    the bytes this process may still take, measured when None)."""
    largest: tuple[int, str] = (0, "")
    for spec in specs:
        model = _meta_model(spec).eval()
        for (h, w), batch in configs:
            needed = int(forward_peak_bytes(model, (batch, 3, h, w)) * BENCH_MEMORY_FACTOR)
            needed += BENCH_WEIGHT_COPIES * state_bytes(model)
            largest = max(largest, (needed, f"measuring {spec.label} at {batch}×3×{h}×{w}"))
    try:
        check_fits(*largest, available)
    except MemoryEstimateError as exc:
        raise BenchError(str(exc)) from None
