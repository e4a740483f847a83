"""Input sizes with one grammar in every tool: ``480 640`` (H W), ``480x640`` and ``640`` (square) each name ONE size.

Every size flag of every tool (``--input-size`` of maedet-export, maedet-bench, ``maedet-bench profile`` and
maedet-search, ``--test-scale`` of maedet-detect/eval/train, ``--resolution`` and ``--forward-resolution`` of
maedet-search) reads sizes through this module, so a size that works in one works in all; a flag whose target
is square (``square=True``) refuses a non-square size in one sentence.
The bench alone measures several sizes: it takes the flag repeated (``--input-size 480 640 --input-size 640``) or a
comma list (``--input-size 640,800`` is two square sizes). Whether a size suits a model is checked later, by the
tool that knows the model.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from .cli import int_range
from .errors import MaeDetError

__all__ = [
    "SIZE_FORMS",
    "InputSizeAction",
    "OneSizeAction",
    "parse_input_size_flag",
    "parse_one_size",
    "parse_size",
    "square_size",
]

SIZE_FORMS = "640 (square), 480x640 or 480 640 (H W)"
_SEVERAL = "for several sizes repeat the flag (--input-size 480 640 --input-size 640) or give a comma list (640,800)"
_ONE_SIZE = re.compile(r"(\d+)(?:[x×](\d+))?")
MAX_SIZE_DIGITS = 6  # 5000 digits would pass int()'s limit; 6 are far beyond the 8192 pixels a side models take


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text) if len(text) <= 24 else f"a {len(text)}-character value"


def parse_size(text: str) -> tuple[int, int]:
    """``640`` → (640, 640); ``480x640`` → (480, 640); anything else is refused in one sentence."""
    match = _ONE_SIZE.fullmatch(text.strip().lower())
    if not match:
        raise MaeDetError(f"an input size looks like {SIZE_FORMS}, not {_shown(text)}.")
    if any(len(group or "") > MAX_SIZE_DIGITS for group in match.groups()):
        raise MaeDetError(f"an input size of {_shown(text)} is far beyond the 8192 pixels a side the models take.")
    h = int(match.group(1))
    w = int(match.group(2) or h)
    if h < 1 or w < 1:
        raise MaeDetError(f"an input size must be positive, not {text.strip()!r}.")
    return h, w


def parse_input_size_flag(tokens: Sequence[str], flag: str = "--input-size") -> list[tuple[int, int]]:
    """The sizes one flag names: ``H W`` is one size; a single value is a size or a comma list."""
    tokens = list(tokens)
    if len(tokens) == 2:
        if all(t.strip().isdigit() for t in tokens):
            return [parse_size(f"{tokens[0].strip()}x{tokens[1].strip()}")]
        raise MaeDetError(
            f"{flag} takes one size per flag ({SIZE_FORMS}), so {' '.join(tokens)!r} is not one; {_SEVERAL}."
        )
    if len(tokens) != 1:
        raise MaeDetError(
            f"{flag} takes one size per flag ({SIZE_FORMS}), not {len(tokens)} values {' '.join(tokens)[:80]!r}; "
            f"{_SEVERAL}."
        )
    parts = tokens[0].split(",")
    if any(not part.strip() for part in parts):
        raise MaeDetError(f"the size list {tokens[0]!r} has an empty entry; write it like 480x640,640.")
    return [parse_size(part) for part in parts]


def parse_one_size(tokens: Sequence[str], flag: str = "--input-size") -> tuple[int, int]:
    """Exactly one size (``H W``, ``HxW`` or ``S``); a comma list is refused: this flag takes one size."""
    if len(tokens) == 1 and "," in tokens[0]:
        raise MaeDetError(f"{flag} takes one size ({SIZE_FORMS}), not the list {tokens[0]!r}.")
    sizes = parse_input_size_flag(tokens, flag)
    return sizes[0]


def square_size(text: str) -> int:
    """``640`` or ``640x640`` → 640 (an argparse ``type``); a non-square or a list is refused."""
    try:
        sizes = parse_input_size_flag([text])
    except MaeDetError as exc:
        raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None
    if len(sizes) != 1 or sizes[0][0] != sizes[0][1]:
        raise argparse.ArgumentTypeError(f"this takes one square size such as 640 (or 640x640), not {text!r}")
    return sizes[0][0]


class InputSizeAction(argparse.Action):
    """argparse action (nargs='+') for a flag that may name several sizes: each flag adds its sizes once."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            sizes = parse_input_size_flag(list(values), option_string or "--input-size")
        except MaeDetError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        current = list(getattr(namespace, self.dest, None) or [])
        current += [s for s in sizes if s not in current]
        setattr(namespace, self.dest, current)


class OneSizeAction(argparse.Action):
    """argparse action (nargs='+') for a flag that names one size, stored as a (first, second) tuple; ``limits``
    (low, high or None) bounds each side where a tool cannot run outside them (``maedet-detect --test-scale 1 1``).

    ``square=True``: the flag takes one square size (``640``, ``640x640`` or ``640 640``, the same spelling as
    every other size flag) and stores its side as an int; a non-square size is refused."""

    def __init__(
        self, *args: Any, limits: tuple[int, int | None] | None = None, square: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.square = square

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            size = parse_one_size(list(values), option_string or "--input-size")
        except MaeDetError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        if self.limits is not None:
            side = int_range(*self.limits, what="a side length in pixels")
            try:
                for value in size:
                    side(str(value))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentError(self, str(exc)) from None
        if self.square and size[0] != size[1]:
            shown = "x".join(map(str, size))
            raise argparse.ArgumentError(self, f"this takes one square size such as 640 (or 640x640), not {shown}")
        setattr(namespace, self.dest, size[0] if self.square else size)
