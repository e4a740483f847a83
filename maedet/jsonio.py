"""Reading a user's JSON file as plain data, with every way it can fail turned into one sentence (issue 17).

Python's ``json`` module raises more than ``JSONDecodeError`` on hostile text: ``RecursionError`` on deeply nested
arrays (``[[[[…`` a hundred thousand deep), ``ValueError`` for an integer longer than Python's 4300-digit
conversion limit, and it turns ``1e999`` into ``inf`` and accepts ``NaN``/``Infinity`` without a word. Every JSON
file a user hands a maedet tool (folder configs, latency tables, partial profiles, COCO annotations, cache
records, engine sidecars) is read here, so the file is a regular one of bounded size (a FIFO or ``/dev/zero`` is
never opened), nesting and number size are bounded, and non-finite numbers are refused.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import MaeDetError

__all__ = ["MAX_JSON_DIGITS", "JsonError", "parse_json", "read_json"]

MAX_JSON_DIGITS = 64  # digits of one number: a float64 needs 17, an int64 19; more is a hostile or broken file


class JsonError(MaeDetError):
    """A JSON file or text that cannot be read as plain, finite data."""


def _number(text: str, what: str, kind: type) -> Any:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise JsonError(f"{what} holds a number of {len(text)} characters; at most {MAX_JSON_DIGITS} are read.")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise JsonError(f"{what} holds the number {text[:40]}, which is too large for a float.")
    return value


def _no_constant(name: str, what: str) -> Any:
    raise JsonError(f"{what} holds {name}, which is not a finite number.")


def parse_json(text: str | bytes, what: str = "the JSON text") -> Any:
    """Parse ``text`` (a UTF-8 byte-order mark is accepted) into plain data, or one sentence naming ``what``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonError(f"{what} is not UTF-8 text.") from None
    try:
        return json.loads(
            text.removeprefix("\ufeff"),
            parse_int=lambda s: _number(s, what, int),
            parse_float=lambda s: _number(s, what, float),
            parse_constant=lambda s: _no_constant(s, what),
        )
    except RecursionError:
        raise JsonError(f"{what} is nested too deeply to be read.") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
    except (ValueError, MemoryError) as exc:
        if isinstance(exc, JsonError):
            raise
        raise JsonError(f"{what} cannot be read as JSON ({type(exc).__name__}).") from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file", max_bytes: int = 64 * 2**20) -> Any:
    """The data in a regular file of at most ``max_bytes``; ``what`` names the file in the sentence."""
    path = Path(path)
    shown = f"{what} {str(path)!r}"
    try:
        info = path.stat()
    except OSError as exc:
        raise JsonError(f"cannot read {shown}: {exc.strerror or type(exc).__name__}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise JsonError(f"{shown} is not a regular file.")
    if info.st_size > max_bytes:
        raise JsonError(f"{shown} is {info.st_size:,} bytes; at most {max_bytes:,} are read.")
    expected = info.st_size  # read() with a 4 GiB size hint would reserve 4 GiB up front
    try:
        with path.open("rb") as handle:
            data = handle.read(expected + 1)
    except OSError as exc:
        raise JsonError(f"cannot read {shown}: {exc.strerror or type(exc).__name__}.") from None
    if len(data) > expected:
        raise JsonError(f"{shown} grew while being read; read it again once it is written.")
    return parse_json(data, shown)
