"""The rule every fitted number of a latency table is held to when it loads: finite, and far enough from float64's
limit that no prediction overflows.

A table is plain data that people share. A coefficient of 1e308 passes a finiteness check, yet times a network's
features it is infinite, and an infinite prediction reached ``maedet-search score --json`` as a traceback. Real
coefficients are ~1e-8 ms per multiply-add and tens of MiB per intercept; features stay below ~1e27 for any structure
the zoo accepts, so 1e12 leaves every product of a feature, a coefficient and a calibration scale finite.
"""

from __future__ import annotations

import math
from typing import Any

from maedet.errors import MaeDetError

__all__ = ["BOUND", "MAX_TABLE_NUMBER", "table_coefficients", "table_number"]

MAX_TABLE_NUMBER = 1e12
BOUND = f"of magnitude at most {MAX_TABLE_NUMBER:.0e}"  # how an error sentence states the rule


def table_number(value: Any) -> bool:
    """Whether ``value`` is a plain JSON number a table may carry: finite and within ±MAX_TABLE_NUMBER."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= MAX_TABLE_NUMBER
    )


def table_coefficients(coefs: Any, count: int, what: str) -> list[float]:
    """One linear model's ``count`` coefficients, each a non-negative table number, or one sentence naming ``what``."""
    if not isinstance(coefs, list) or len(coefs) != count or not all(table_number(c) and c >= 0 for c in coefs):
        raise MaeDetError(f"{what} must be {count} non-negative numbers {BOUND}.")
    return [float(c) for c in coefs]
