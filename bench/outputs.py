"""Where a bench run's JSON, CSV and plot go: checked before the run, written together after it.

A run takes minutes, so an output that cannot be written (a directory, a read-only folder, ``/proc``, a device) is
refused in one sentence before any measuring starts, by really creating and removing a temporary file in its folder
(permission bits alone say nothing for root or a read-only mount). After the run every output is rendered in memory
first and then written all or none (:func:`maedet.fileio.write_all_or_none`): a failing writer leaves no file.
Missing folders are created at the end, as the writers always did.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from maedet.errors import MaeDetError
from maedet.fileio import TEMP_SUFFIX, check_output_path, write_all_or_none

from .errors import BenchError
from .results import BenchResult

__all__ = ["check_outputs", "write_outputs", "write_rendered"]

logger = logging.getLogger(__name__)


def _existing_ancestor(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _probe_folder(folder: Path, path: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``: the only test that holds for root, ``/proc`` and ro mounts."""
    try:
        fd, name = tempfile.mkstemp(prefix=".maedet-bench-probe.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BenchError(
            f"cannot write the {what} {str(path)!r}: {str(folder)!r} refuses new files ({reason})."
        ) from None
    os.close(fd)
    os.unlink(name)


def _check_one(path: Path, what: str) -> None:
    parent = path.parent
    if parent.is_dir():
        try:
            check_output_path(path, what)
        except MaeDetError as exc:
            raise BenchError(str(exc)) from None
        _probe_folder(parent, path, what)
        return
    ancestor = _existing_ancestor(parent)
    if not ancestor.is_dir():
        raise BenchError(f"cannot write the {what} {str(path)!r}: {str(ancestor)!r} is not a folder.")
    if not path.name or path.name in (".", ".."):
        raise BenchError(f"the {what} path {str(path)!r} names no file.")
    _probe_folder(ancestor, path, what)


def check_outputs(outputs: Mapping[str, str | os.PathLike[str] | None]) -> dict[str, Path]:
    """The outputs given (``{'JSON': path, 'CSV': None, ...}``) as paths, each checked; one sentence if one cannot be
    written or two name the same file."""
    checked: dict[str, Path] = {}
    for what, given in outputs.items():
        if given is None:
            continue
        path = Path(given).expanduser()
        if str(given).strip() == "":
            raise BenchError(f"the {what} path is empty.")
        for other, seen in checked.items():
            if os.path.abspath(seen) == os.path.abspath(path):
                raise BenchError(f"the {other} and the {what} would both be written to {str(path)!r}.")
        _check_one(path, what)
        checked[what] = path
    return checked


def write_outputs(result: BenchResult, outputs: Mapping[str, Path]) -> dict[str, Path]:
    """Render every output of ``result`` in memory, then write them all or none; keys 'JSON', 'CSV', 'plot'."""
    from .report import csv_text, json_text, plot_png

    render: dict[str, Callable[[BenchResult], bytes]] = {
        "JSON": lambda r: json_text(r).encode(),
        "CSV": lambda r: csv_text(r).encode(),
        "plot": plot_png,
    }
    unknown = sorted(set(outputs) - set(render))
    if unknown:
        raise BenchError(f"unknown output kind {', '.join(unknown)}; choose from {', '.join(render)}.")
    if "plot" in outputs and not result.results:
        logger.warning("no row was measured, so the plot %s is not written.", outputs["plot"])
        outputs = {what: path for what, path in outputs.items() if what != "plot"}
    return write_rendered({what: render[what](result) for what in outputs}, outputs)


def write_rendered(contents: Mapping[str, bytes], outputs: Mapping[str, Path]) -> dict[str, Path]:
    """Write outputs already rendered in memory (``contents[kind]`` to ``outputs[kind]``), all or none."""
    for path in outputs.values():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create the folder {str(path.parent)!r}: {exc.strerror}.") from None
    write_all_or_none([(path, _writer(contents[what])) for what, path in outputs.items()])
    return dict(outputs)


def _writer(data: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    return write
