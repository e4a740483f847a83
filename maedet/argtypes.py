"""argparse ``type=`` readers for numbers that refuse, in one short line, what no run can use (issue 17).

``type=int`` echoes a 5000-digit argument back in full and accepts any size. This reader caps the text length
(Python refuses to convert more than 4300 digits anyway), checks a range, and quotes at most a few characters of a
bad value.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["int_range"]

MAX_NUMBER_CHARS = 32


def _shown(text: str) -> str:
    return repr(text) if len(text) <= MAX_NUMBER_CHARS else f"a {len(text)}-character value"


def int_range(low: int, high: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """A reader of whole numbers from ``low`` to ``high`` (inclusive; None: no upper bound but the text length)."""

    def read(text: str) -> int:
        try:
            if len(text.strip()) > MAX_NUMBER_CHARS:
                raise ValueError
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {_shown(text)}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value:,}")
        return value

    read.__name__ = "whole number"
    return read
