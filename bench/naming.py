"""Row names for the models of one run: unique, readable, and the user's choice when given as ``NAME=PATH``.

A structure file's row is named by its stem (``runs/x/searched.json`` → ``searched``). Searches all write
``best.json``, so when two files would share a name each is named by its folder instead
(``--structure a/best.json --structure b/best.json`` → rows ``a`` and ``b``); ``NAME=PATH`` names a row outright
(``--structure mine=runs/x/best.json``). Names that still clash are refused in one sentence naming both paths.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import BenchError
from .models import ModelSpec, is_reference, parse_model

__all__ = ["NAME_PATTERN", "parse_models", "split_name"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_NAME_RULE = "letters, digits and . _ + - (at most 64 characters, starting with a letter or digit)"


@dataclasses.dataclass
class _Entry:
    spec: ModelSpec
    text: str  # what the user wrote
    path: Path | None  # the structure file the row comes from, if any
    named: bool  # the user chose the name (NAME=PATH)


def split_name(text: str) -> tuple[str | None, str]:
    """``'mine=runs/x/best.json'`` → ``('mine', 'runs/x/best.json')``; text without a name (or an existing file whose
    name holds '=', or a path with '=' in a folder) → ``(None, text)``."""
    name, sep, rest = text.partition("=")
    if not sep or "/" in name or "\\" in name or Path(text).exists():
        return None, text
    name = name.strip()
    if not NAME_PATTERN.fullmatch(name):
        raise BenchError(f"the row name {name!r} in {text!r} must use only {_NAME_RULE}.")
    if not rest.strip():
        raise BenchError(f"{text!r} names no model or structure file after '='.")
    if is_reference(name):
        raise BenchError(f"the row name {name!r} is kept for the reference model; choose another name in {text!r}.")
    return name, rest.strip()


def _parse_one(text: str) -> _Entry:
    name, reference = split_name(text)
    try:
        spec = parse_model(reference)
    except (RecursionError, MemoryError, OverflowError) as exc:  # a hostile structure file must not escape as these
        raise BenchError(f"cannot read structure file {reference!r}: {type(exc).__name__}.") from None
    is_file = spec.structure is not None and spec.name == "maedet" and Path(reference).is_file()
    if name is not None:
        spec = dataclasses.replace(spec, label=name)
    return _Entry(spec, text, Path(reference) if is_file else None, name is not None)


def _folder_name(path: Path) -> str:
    return path.resolve().parent.name


def _clash_message(label: str, entries: list[_Entry]) -> str:
    paths = [str(e.path) for e in entries if e.path is not None]
    if len(paths) >= 2 and len({Path(p).resolve() for p in paths}) == 1:
        return f"the structure file {paths[0]!r} was given twice."
    if not paths:
        return f"a model was named twice: {label}."
    shown = " and ".join(repr(e.text) for e in entries[:2])
    return (
        f"two models would both be named {label!r}: {shown}; name the structure's row with NAME=PATH "
        f"(e.g. --structure mine={paths[0]})."
    )


def parse_models(models: Sequence[str | ModelSpec]) -> list[ModelSpec]:
    """Model specs with unique row names (see the module docstring), or one sentence saying which names clash."""
    entries = [_Entry(m, m.label, None, True) if isinstance(m, ModelSpec) else _parse_one(m) for m in models]
    if not entries:
        raise BenchError("no model was given.")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.spec.label] = counts.get(e.spec.label, 0) + 1
    for e in entries:
        if counts[e.spec.label] > 1 and e.path is not None and not e.named:
            folder = _folder_name(e.path)
            if folder and NAME_PATTERN.fullmatch(folder) and not is_reference(folder):
                e.spec = dataclasses.replace(e.spec, label=folder)
    by_label: dict[str, list[_Entry]] = {}
    for e in entries:
        by_label.setdefault(e.spec.label, []).append(e)
    for label, group in by_label.items():
        if len(group) > 1:
            raise BenchError(_clash_message(label, group))
    return [e.spec for e in entries]
