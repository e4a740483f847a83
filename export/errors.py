"""The export wing's error names; they are defined in :mod:`maedet.errors` because the runtime layer (base) raises
them too."""

from __future__ import annotations

from maedet.errors import ExportError, MissingDependencyError, first_line

__all__ = ["ExportError", "MissingDependencyError", "first_line"]
