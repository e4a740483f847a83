"""The bench wing's error types."""

from __future__ import annotations

from maedet.errors import MaeDetError

__all__ = ["BackendUnavailable", "BenchError"]


class BenchError(MaeDetError):
    """Bad input or an impossible request: the message is one complete sentence meant for the user."""


class BackendUnavailable(BenchError):
    """Found out only when trying (an export failed, ONNX Runtime fell back to CPU...): the row is skipped with
    this reason instead of stopping the run."""
