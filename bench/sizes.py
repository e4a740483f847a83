"""``--input-size`` with one meaning in every tool: one flag is one size; several sizes repeat the flag or list them.

``--input-size 480 640`` (H W), ``--input-size 480x640`` and ``--input-size 640`` (square) each name ONE input, as
``maedet-export`` reads them. The bench measures several sizes when the flag is repeated
(``--input-size 480 640 --input-size 640``) or given a comma list (``--input-size 640,800`` is two square sizes,
``480x640,640`` is two sizes). Whether a size suits the models (32 to 8192 pixels a side) is checked later,
with the rest of the settings.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from .errors import BenchError

__all__ = ["SIZE_FORMS", "InputSizeAction", "parse_input_size_flag", "parse_size"]

SIZE_FORMS = "640 (square), 480x640 or 480 640 (H W)"
_SEVERAL = "for several sizes repeat the flag (--input-size 480 640 --input-size 640) or give a comma list (640,800)"
_ONE_SIZE = re.compile(r"(\d+)(?:[x×](\d+))?")
MAX_SIZE_DIGITS = 6


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text) if len(text) <= 24 else f"a {len(text)}-character value"


def parse_size(text: str) -> tuple[int, int]:
    """``640`` → (640, 640); ``480x640`` → (480, 640); anything else is refused in one sentence."""
    match = _ONE_SIZE.fullmatch(text.strip().lower())
    if not match:
        raise BenchError(f"an input size looks like {SIZE_FORMS}, not {_shown(text)}.")
    if any(len(group or "") > MAX_SIZE_DIGITS for group in match.groups()):  # 5000 digits: past int()'s limit
        raise BenchError(f"an input size of {_shown(text)} is far beyond the 8192 pixels a side the models take.")
    h = int(match.group(1))
    w = int(match.group(2) or h)
    if h < 1 or w < 1:
        raise BenchError(f"an input size must be positive, not {text.strip()!r}.")
    return h, w


def parse_input_size_flag(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """The sizes one ``--input-size`` flag names: ``H W`` is one size; a single value is a size or a comma list."""
    tokens = list(tokens)
    if len(tokens) == 2:
        if all(t.strip().isdigit() for t in tokens):
            return [parse_size(f"{tokens[0].strip()}x{tokens[1].strip()}")]
        raise BenchError(
            f"--input-size takes one size per flag ({SIZE_FORMS}), so {' '.join(tokens)!r} is not one; {_SEVERAL}."
        )
    if len(tokens) != 1:
        raise BenchError(
            f"--input-size takes one size per flag ({SIZE_FORMS}), not {len(tokens)} values "
            f"{' '.join(tokens)!r}; {_SEVERAL}."
        )
    parts = tokens[0].split(",")
    if any(not part.strip() for part in parts):
        raise BenchError(f"the size list {tokens[0]!r} has an empty entry; write it like 480x640,640.")
    return [parse_size(part) for part in parts]


class InputSizeAction(argparse.Action):
    """argparse action for ``--input-size`` (nargs='+'): each flag adds its sizes; repeats are measured once."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            sizes = parse_input_size_flag(list(values))
        except BenchError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        current = list(getattr(namespace, self.dest, None) or [])
        current += [s for s in sizes if s not in current]
        setattr(namespace, self.dest, current)
