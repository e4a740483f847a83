"""The one error type the CLI turns into a single sentence on stderr and exit code 2."""

from __future__ import annotations

__all__ = ["ExportError", "MissingDependencyError"]


class ExportError(ValueError):
    """Bad input or an impossible request: the message is one complete sentence meant for the user."""


class MissingDependencyError(ExportError):
    """An optional part (TensorRT, a GPU, onnxslim) is not available on this machine."""
