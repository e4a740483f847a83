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
from maedet.zoo.latency import FEATURE_NAMES, Op, op_features, regime_key

__all__ = ["CHANNEL_BLOCKS", "REGIME_MIN_SAMPLES", "fit_op_model"]

CHANNEL_BLOCKS = (1, 8, 16)  # candidate channel blocks of the runtime's layout (none, AVX2, AVX-512)
REGIME_MIN_SAMPLES = 15  # operators of one role at one feature size needed for that size's own model


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


def _regimes(samples: Sequence[tuple[Sequence[Op], float]], batch: int, block: int) -> dict[str, list[float]]:
    """Per role and input feature size with at least REGIME_MIN_SAMPLES operators timed alone, the role's model
    fitted on that size only (``regime_key``: ``pw@160``).

    Why: the runtime picks its kernel and how it tiles the work by the feature map's size, so one role's cost per
    MAC and per element is not the same at every size. Measured at 640 px (ONNX Runtime 1.32, AVX2), one model per
    role predicted the 1×1 convs at 160×160 8.7% low on average and those at 20×20 5.6% high; a model per size took
    the held-out networks within ±5% from 79% to 82% (203 networks). Sizes with fewer samples, and any size a search
    meets that the profile did not, use the role's model.
    """
    groups: dict[tuple[str, int], list[tuple[Sequence[Op], float]]] = {}
    for ops, ms in samples:
        if len(ops) == 1:  # operators timed inside networks; pieces mix roles and sizes
            groups.setdefault((ops[0].role, ops[0].size), []).append((ops, ms))
    regimes: dict[str, list[float]] = {}
    for (role, size), group in sorted(groups.items()):
        if len(group) >= REGIME_MIN_SAMPLES:
            coef, _ = _nnls_relative(*_design(group, [role], batch, block))
            regimes[regime_key(role, size)] = coef.tolist()
    return regimes


def fit_op_model(
    samples: Sequence[tuple[Sequence[Op], float]],
    batch: int,
    blocks: Sequence[int] = CHANNEL_BLOCKS,
    *,
    regimes: bool = False,
) -> dict[str, Any]:
    """Per-role non-negative coefficients (ms per feature unit) from timed samples.

    A sample is the operators it ran and their measured ms: one operator timed inside a network, or a whole piece
    timed on its own; the same linear model covers both. The channel block that fits best is kept (the runtime
    pads channels to its layout's block, which the fit discovers instead of assuming an instruction set; a
    detector's extra roles take the backbone's block, given as ``blocks``). With ``regimes``, the roles' models
    per feature size as well (:func:`_regimes`).
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
    per_size = _regimes(samples, batch, best["channel_block"]) if regimes else {}
    return best | ({"regimes": per_size} if per_size else {})
