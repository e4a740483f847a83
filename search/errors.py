"""The search wing's error: bad settings, an impossible budget, or a state a search cannot continue from."""

from __future__ import annotations

from maedet.errors import MaeDetError

__all__ = ["SearchError"]


class SearchError(MaeDetError):
    """Reported by ``maedet-search`` as one sentence with exit code 2."""
