"""The one error type of the project: a complete sentence meant for the user.

Every wing (zoo, search, export, bench) raises ``MaeDetError`` or a subclass for bad input and impossible
requests. The command-line runner (:mod:`maedet.cli`) turns exactly these into ``maedet-<tool>: error: …`` and exit
code 2; anything else is a bug and keeps its traceback. It subclasses ``ValueError`` so callers that caught
``ValueError`` before keep working.
"""

from __future__ import annotations

import re

__all__ = ["ExportError", "MaeDetError", "MissingDependencyError", "first_line", "printable", "shorten"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class MaeDetError(ValueError):
    """Bad input or an impossible request; ``str(error)`` is one sentence for the user."""


class MissingDependencyError(MaeDetError):
    """An optional part (TensorRT, a GPU, onnxslim, ray) is not available on this machine."""


class ExportError(MaeDetError):
    """Bad input or an impossible request while exporting or running a model: one sentence meant for the user.

    It lives here, not in the export wing, because the runtime layer (:mod:`maedet.runtime`) that runs exported
    files sits in the base layer and raises it too."""


def printable(text: str) -> str:
    """``text`` with control characters (NUL from a checkpoint key, escape sequences) written as ``\\xNN``: a name
    from a file is shown, never executed by the terminal or cut at a NUL."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis (never mid-word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return cut.rstrip(" ,;:") + "…"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), short enough to end a one-sentence error."""
    text = str(exc).strip()
    return shorten(text.splitlines()[0], limit) if text else type(exc).__name__
