"""The one error type of the project: a complete sentence meant for the user.

Every wing (zoo, search, export, bench) raises ``MaeDetError`` or a subclass for bad input and impossible
requests. The command-line runner (:mod:`maedet.cli`) turns exactly these into ``maedet-<tool>: error: …`` and exit
code 2; anything else is a bug and keeps its traceback. It subclasses ``ValueError`` so callers that caught
``ValueError`` before keep working.
"""

from __future__ import annotations

__all__ = ["MaeDetError", "MissingDependencyError"]


class MaeDetError(ValueError):
    """Bad input or an impossible request; ``str(error)`` is one sentence for the user."""


class MissingDependencyError(MaeDetError):
    """An optional part (TensorRT, a GPU, onnxslim, ray) is not available on this machine."""
