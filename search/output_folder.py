"""The output folder of a search: checked before any work, then held by one search at a time.

Two searches writing into one folder would overwrite each other's checkpoint and results, so a search takes a
non-blocking ``fcntl.flock`` on a lock file inside the folder and a second one stops with one sentence. The kernel
drops the lock with the process (also after ``kill -9``), so a stale lock never blocks anyone. Creating the lock file
also proves the folder is writable (as root too, where permission bits say nothing), and while holding it the search
removes the temporary files that killed writers left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from maedet.fileio import check_output_path, pid_alive, refuse_overwriting_inputs, remove_stale_temps

from .errors import SearchError

__all__ = ["LOCK_NAME", "check_output_folder", "locked_output_folder"]

LOCK_NAME = ".maedet-search.lock"
# maedet-search before maedet.fileio named its temporary files ``.<name>.<pid>.tmp``
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out: Path, names: Iterable[str], inputs: Mapping[str, str | None] | None = None) -> None:
    """Refuse, in one sentence and before any work, an ``--out`` the search could not write its files into.

    ``out`` must be a folder or a new path whose nearest existing parent is a writable folder; every output name
    in it must be a regular file or a new name (never a symbolic link, a folder, a FIFO or a device), and none
    may be one of the ``inputs`` (what they are called → path: the initial structure, the latency table).
    """
    names = tuple(names)
    refuse_overwriting_inputs(inputs or {}, {f"output {name}": out / name for name in names})
    shown = str(out)
    if out.is_symlink() and not out.exists():
        raise SearchError(f"the output folder {shown!r} is a broken symbolic link.")
    if out.exists() and not out.is_dir():
        raise SearchError(f"the output folder {shown!r} exists and is not a folder.")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise SearchError(f"cannot create the output folder {shown!r}: {str(base)!r} is a file, not a folder.")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SearchError(f"cannot write in the output folder {shown!r}: {str(base)!r} is not writable.")
    if out.is_dir():
        for name in names:
            check_output_path(out / name, f"output {name}")


def _remove_legacy_temps(out: Path, names: Iterable[str]) -> None:
    """Temporary files of our own output names left by a killed writer of an earlier version."""
    ours = set(names)
    for entry in os.scandir(out):
        match = _LEGACY_TEMP_RE.match(entry.name)
        stale = match and match["name"] in ours and not pid_alive(int(match["pid"]))
        if stale and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _open_lock(out: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(out / LOCK_NAME, flags, 0o666)
    except OSError as exc:
        raise SearchError(f"cannot write in the output folder {str(out)!r} ({exc.strerror}).") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SearchError(f"{str(out / LOCK_NAME)!r} is not a regular file; remove it.")
    return fd


def _remove_if_empty(out: Path) -> None:
    """Undo the folder a failed start created (it holds at most our lock file)."""
    with contextlib.suppress(OSError):
        if {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()


@contextlib.contextmanager
def locked_output_folder(out: Path, names: Iterable[str]) -> Iterator[Path]:
    """Create ``out`` if needed and hold its lock; a folder this call created is removed again if the work fails."""
    names = tuple(names)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"cannot create the output folder {str(out)!r} ({exc.strerror}).") from None
    fd: int | None = None
    ok = False
    new_lock = not (out / LOCK_NAME).exists()
    held = False
    try:
        fd = _open_lock(out)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchError(
                f"another search is running in {str(out)!r}; wait for it to finish or choose another --out."
            ) from None
        held = True
        remove_stale_temps(out)
        _remove_legacy_temps(out, names)
        yield out
        ok = True
    finally:
        if created and not ok:  # still holding the lock: nobody can have taken it meanwhile
            _remove_if_empty(out)
        elif new_lock and held and not ok:  # a refused start leaves the folder as it found it
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
        if fd is not None:
            os.close(fd)
