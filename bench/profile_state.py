"""Measurements so far of a profile, a validation or a transfer, saved beside the output after every unit.

Every command that measures networks for a latency table keeps what it measured in ``OUT.partial``, keyed by unit
name, with the settings it was measured under; run again with the same settings, it resumes where it stopped, and
with other settings it refuses in one sentence (mixing measurements of two targets would fit nonsense).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text
from maedet.jsonio import read_json

from .profile_measure import Timing

__all__ = ["MeasuredUnits"]

LOG = logging.getLogger("maedet.bench.profile")


class MeasuredUnits:
    """``units``: name → Timing, loaded from ``OUT.partial`` when it holds the same ``fingerprint`` and format."""

    def __init__(self, out: Path, fingerprint: dict[str, Any], partial_format: str) -> None:
        self.path = out.with_name(out.name + ".partial")
        self.fingerprint = fingerprint
        self.format = partial_format
        self.units: dict[str, Timing] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            data = read_json(self.path, "partial profile")
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:  # JsonError included: nested too deeply, huge numbers, not JSON
            LOG.warning("ignoring an unreadable partial profile %s", self.path)
            return
        if data.get("format") != self.format or data.get("settings") != self.fingerprint:
            stored = data.get("settings") if isinstance(data.get("settings"), dict) else {}
            diff = [k for k, v in self.fingerprint.items() if stored.get(k) != v]
            raise MaeDetError(
                f"{self.path} holds a partial measurement with other settings ({', '.join(diff) or 'format'}); "
                "delete it or run with the same settings."
            )
        try:
            self.units = {str(k): Timing.from_dict(v) for k, v in data.get("units", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise MaeDetError(f"{self.path} is a damaged partial measurement; delete it to start again.") from None
        LOG.info("resuming: %d units already measured", len(self.units))

    def save(self) -> None:
        data = {"format": self.format, "settings": self.fingerprint}
        data["units"] = {k: t.to_dict() for k, t in self.units.items()}
        atomic_write_text(self.path, json.dumps(data) + "\n", "partial profile")

    def done(self) -> None:
        self.path.unlink(missing_ok=True)
