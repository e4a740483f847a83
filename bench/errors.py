"""The one error type the bench CLI turns into a single sentence on stderr and exit code 2."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(ValueError):
    """Bad input or an impossible request: the message is one complete sentence meant for the user."""
