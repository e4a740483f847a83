"""The export wing's error type, and the one helper that turns any exception into a short line for a sentence."""

from __future__ import annotations

from maedet.errors import MaeDetError, MissingDependencyError, shorten

__all__ = ["ExportError", "MissingDependencyError", "first_line"]


class ExportError(MaeDetError):
    """Bad input or an impossible request while exporting or running a model: one sentence meant for the user."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), short enough to end a one-sentence error."""
    text = str(exc).strip()
    return shorten(text.splitlines()[0], limit) if text else type(exc).__name__
