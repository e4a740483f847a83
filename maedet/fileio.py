"""Writing files so that nobody ever sees half of one, and nothing but our own file is ever touched.

Every output goes to a fresh temporary file in the target folder, created exclusively (``O_EXCL``) under an
unpredictable name, then renamed over the target. So a planted symlink at a guessable temporary name cannot redirect
the write, an interrupted writer leaves no final-named partial file, and a reader sees the old file or the new one.
The target itself must be a regular file or a new path: a symlink, a directory, a FIFO or a device node is refused in
one sentence (``--json /dev/null`` must never replace ``/dev/null``). Files get the permissions ``open()`` would
give them (0666 less the umask), not the 0600 of ``mkstemp``. Temporary names carry the writer's PID, so files left
by a killed writer can be recognised and removed by the next writer in that folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .errors import MaeDetError

__all__ = [
    "TEMP_SUFFIX",
    "atomic_output",
    "atomic_output_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "pid_alive",
    "read_regular_bytes",
    "refuse_overwriting_inputs",
    "remove_stale_temps",
    "write_all_or_none",
]

TEMP_SUFFIX = ".maedet-tmp"
_TEMP_RE = re.compile(r"^\..*\.(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + r"$")
_NAME_ROOM = 96  # bytes of the target's name kept in a temp name, so a 255-byte name still leaves room


# A write that fails for want of room: a full disk, a quota, or a file larger than the process may write.
_NO_ROOM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_ROOM_TEXTS = tuple(os.strerror(code) for code in _NO_ROOM_ERRNOS)


def _no_room_reason(exc: BaseException) -> str | None:
    """Why a writer failed, when it is for want of room: an OSError's errno, or a library's wrapped message
    (safetensors and others re-raise the OS error as their own type, its text inside)."""
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    text = str(exc)
    return next((reason for reason in _NO_ROOM_TEXTS if reason in text), None)


@contextlib.contextmanager
def _room_errors(path: Path, what: str) -> Iterator[None]:
    """A write that runs out of room (ENOSPC, EDQUOT, EFBIG) as one sentence; the caller removes the temporary."""
    try:
        yield
    except Exception as exc:
        reason = _no_room_reason(exc)
        if reason is None:
            raise
        raise MaeDetError(
            f"could not write the {what} {str(path)!r}: {reason} (a full disk, a quota or a file size limit); "
            "nothing was written."
        ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Refuse, in one sentence, an output path that is not a regular file or a new name in an existing folder."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise MaeDetError(f"the {what} path {str(path)!r} names no file.")
    _check_name_length(path, what)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise MaeDetError(f"cannot use {str(path)!r} as the {what}: {exc.strerror}.") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise MaeDetError(f"the {what} {str(path)!r} is a symbolic link; give a regular file or a new path.")
        if stat.S_ISDIR(st.st_mode):
            raise MaeDetError(f"the {what} {str(path)!r} is a directory; give a file name.")
        if not stat.S_ISREG(st.st_mode):
            raise MaeDetError(f"the {what} {str(path)!r} is not a regular file (a device, FIFO or socket).")
    parent = path.parent
    if not parent.is_dir():
        reason = "is not a directory" if parent.exists() else "does not exist"
        raise MaeDetError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} {reason}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MaeDetError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} is not writable.")
    _probe_writable(path, what)
    return path


def read_regular_bytes(path: str | os.PathLike[str], max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, without ever blocking on what is not one.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor: a FIFO planted at the path cannot
    hang the reader (a plain ``open`` waits for a writer forever), and a device or a file swapped in between a
    check and the open is refused all the same. A symbolic link is refused too (``O_NOFOLLOW``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise MaeDetError(f"cannot read the {what} {str(path)!r}: {reason}.") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise MaeDetError(f"cannot read the {what} {str(path)!r}: not a regular file (a FIFO, device or socket).")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise MaeDetError(f"cannot read the {what} {str(path)!r}: larger than {max_bytes:,} bytes.")
    return data


PathMap = Mapping[str, "str | os.PathLike[str] | None"]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (OSError, ValueError):
        return None


def _same_file(a: Path, a_stat: os.stat_result | None, b: Path, b_stat: os.stat_result) -> bool:
    """One file under two names: the same inode (hard links, symlinks) or the same resolved path."""
    if a_stat is not None:
        return (a_stat.st_dev, a_stat.st_ino) == (b_stat.st_dev, b_stat.st_ino)
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(child: Path, folder: Path) -> bool:
    return Path(os.path.realpath(child)).is_relative_to(os.path.realpath(folder))


def refuse_overwriting_inputs(inputs: PathMap, outputs: PathMap = {}, output_folders: PathMap = {}) -> None:  # noqa: B006
    """Refuse, in one sentence and before any work, an output that would replace or hide one of the inputs.

    ``inputs``, ``outputs`` (files written) and ``output_folders`` (folders written whole, replacing what is there)
    map what a path is called in messages (``--checkpoint``) to the path; None entries are skipped. An output file
    is refused when it is an input file (the same inode: a hard link or a symbolic link to it counts; or the same
    resolved path), or an existing file inside an input folder (which the tool reads). An output folder is refused
    when it is an input or holds one.
    """
    given = [(what, Path(path)) for what, path in inputs.items() if path is not None]
    sources = [(what, path, st) for what, path in given if (st := _stat(path)) is not None]  # only what exists
    for out_what, out in ((w, Path(p)) for w, p in outputs.items() if p is not None):
        out_stat = _stat(out)
        for in_what, src, src_stat in sources:
            if stat.S_ISDIR(src_stat.st_mode):
                clash = out_stat is not None and _inside(out, src)
            else:
                clash = _same_file(out, out_stat, src, src_stat)
            if clash:
                raise MaeDetError(
                    f"the {out_what} {str(out)!r} is the {in_what} {str(src)!r} (or inside it, or a link to it); "
                    "writing it would destroy the input, so give the output another path; nothing was written."
                )
    for out_what, out in ((w, Path(p)) for w, p in output_folders.items() if p is not None):
        for in_what, src, _ in sources:
            if _inside(src, out):
                raise MaeDetError(
                    f"the {out_what} {str(out)!r} holds the {in_what} {str(src)!r}, which writing the folder would "
                    "destroy; give the output another path; nothing was written."
                )


def _check_name_length(path: Path, what: str) -> None:
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    length = len(os.fsencode(path.name))
    if length > name_max:
        raise MaeDetError(f"the {what} name is {length} bytes long; this file system allows at most {name_max}.")


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a temporary file is created and its name recorded: delivered in between, they
    would leave a file that no clean-up knows of. Only the main thread receives them, so only it holds them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _new_temp(path: Path) -> Path:
    """A fresh, empty temporary file beside ``path`` (created with ``O_EXCL`` under an unpredictable name)."""
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(name)


def _probe_writable(path: Path, what: str) -> None:
    """Create and remove one temporary file where the output will go: a read-only mount, /proc or a full disk
    fails here, before the work, rather than after it (``os.access`` says yes to root on any folder)."""
    probe: Path | None = None
    try:
        with _interrupts_held():
            probe = _new_temp(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise MaeDetError(f"cannot write the {what} {str(path)!r} in {str(path.parent)!r}: {reason}.") from None
    finally:
        if probe is not None:
            probe.unlink()


def _short_name(name: str, room: int = _NAME_ROOM) -> str:
    """At most ``room`` bytes of ``name`` as the file system stores it, never cutting a UTF-8 character in two."""
    raw = os.fsencode(name)[:room]
    for cut in range(4):  # a UTF-8 character is at most 4 bytes: drop the partial one at the end
        try:
            return raw[: len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return os.fsdecode(raw)  # not UTF-8 in the first place: keep the bytes as they are


def _temp_prefix(path: Path) -> str:
    return f".{_short_name(path.name)}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID still runs (ours counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files and folders of our naming whose writer is no longer running (a ``kill -9`` leftover)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or pid_alive(int(match.group(1))):
            continue
        target = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target)
            else:
                target.unlink()
            removed.append(target)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], what: str = "output") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it is renamed to ``path``, on any error removed.

    For writers that insist on a file name (``onnx.save``, ``safetensors``, ``savefig``). The temporary file already
    exists (created with ``O_EXCL``); the writer replaces its content.
    """
    path = check_output_path(path, what)
    remove_stale_temps(path.parent)
    tmp: Path | None = None
    try:
        with _interrupts_held():
            tmp = _new_temp(path)
        with _room_errors(path, what):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        check_output_path(path, what)  # still not a link or a device after the work
        os.replace(tmp, path)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, what: str = "output") -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    path = Path(path)
    with atomic_output(path, what) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "output") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Iterator[Path]:
    """Yield a fresh staging folder beside ``path``; on success it replaces ``path`` (which must be new or a folder).

    Used for multi-file outputs (a converted weights folder): readers see the old folder or the complete new one.
    """
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise MaeDetError(f"the {what} path {str(path)!r} names no folder.")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise MaeDetError(f"the {what} {str(path)!r} exists and is not a folder.")
    parent = path.parent
    if not parent.is_dir():
        raise MaeDetError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MaeDetError(f"cannot write the {what} {str(path)!r}: the folder {str(parent)!r} is not writable.")
    remove_stale_temps(parent)
    staging: Path | None = None
    old: Path | None = None
    try:
        with _interrupts_held():
            staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=parent))
        with _room_errors(path, what):
            yield staging
        mode = 0o777 & ~_umask()
        os.chmod(staging, mode)
        for child in staging.iterdir():
            if child.is_file() and not child.is_symlink():
                os.chmod(child, 0o666 & ~_umask())
        with _interrupts_held():  # an interrupt between the two renames would leave neither folder in place
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=parent))
                os.rmdir(old)
                os.rename(path, old)
            os.rename(staging, path)
    finally:
        for leftover in (staging, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def write_all_or_none(writers: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Run several writers into temporaries and rename them only when every one succeeded."""
    with contextlib.ExitStack() as stack:
        temps = [(stack.enter_context(atomic_output(path)), writer) for path, writer in writers]
        for tmp, writer in temps:
            writer(tmp)
