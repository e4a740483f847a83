"""The fit that turns a profile's timed samples into a latency table's model (docs/latency.md, "The predictor").

Per operator role, latency is a non-negative combination of the cost features of ``maedet.zoo.latency``
(FEATURE_NAMES); the fit is a non-negative least-squares solve (scipy) weighted by 1/time, so it minimises relative
error. It lives beside the profiler that runs it: only ``maedet-bench profile`` fits, everything else only predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.zoo.latency import FEATURE_NAMES, Op, op_features

__all__ = ["CHANNEL_BLOCKS", "fit_op_model"]

CHANNEL_BLOCKS = (1, 8, 16)  # candidate channel blocks of the runtime's layout (none, AVX2, AVX-512)


def _design(
    samples: Sequence[tuple[Sequence[Op], float]], roles: list[str], batch: int, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """One row per sample: for each role, the summed features of the sample's operators in that role."""
    width = len(FEATURE_NAMES)
    x = np.zeros((len(samples), len(roles) * width))
    for i, (ops, _ms) in enumerate(samples):
        for op in ops:
            j = roles.index(op.role) * width
            x[i, j : j + width] += op_features(op, batch, block)
    return x, np.asarray([ms for _ops, ms in samples], dtype=np.float64)


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares on relative error; columns rescaled to unit magnitude for conditioning."""
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    w = 1.0 / np.maximum(y, 1e-9)
    coef, _ = nnls(x / scale * w[:, None], y * w, maxiter=50 * x.shape[1])
    coef = coef / scale
    rmspe = float(100 * np.sqrt(np.mean(((x @ coef - y) * w) ** 2)))
    return coef, rmspe


def fit_op_model(
    samples: Sequence[tuple[Sequence[Op], float]], batch: int, blocks: Sequence[int] = CHANNEL_BLOCKS
) -> dict[str, Any]:
    """Per-role non-negative coefficients (ms per feature unit) from timed samples.

    A sample is the operators it ran and their measured ms: one operator timed inside a network, or a whole piece
    timed on its own; the same linear model covers both. The channel block that fits best is kept (the runtime
    pads channels to its layout's block, which the fit discovers instead of assuming an instruction set; a
    detector's extra roles take the backbone's block, given as ``blocks``).
    """
    samples = [(list(ops), float(ms)) for ops, ms in samples if ops and ms > 0]
    if not samples:
        raise MaeDetError("no timed samples to fit a latency model on.")
    roles = sorted({op.role for ops, _ in samples for op in ops})
    best: dict[str, Any] | None = None
    for block in blocks:
        coef, rmspe = _nnls_relative(*_design(samples, roles, batch, block))
        if best is None or rmspe < best["fit_rmspe_pct"] - 0.05:  # a larger block must fit clearly better
            width = len(FEATURE_NAMES)
            per_role = {r: coef[i * width : (i + 1) * width].tolist() for i, r in enumerate(roles)}
            best = {"channel_block": block, "roles": per_role, "fit_rmspe_pct": rmspe}
    assert best is not None
    return best
