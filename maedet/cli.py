"""One runner for every command line tool: the same error format, exit codes, verbosity and ``--version``.

* ``maedet-<tool>: error: <one sentence>`` on stderr and exit 2 for bad input (:class:`MaeDetError`, an argparse
  usage error, an OS error on a path the user gave (missing, unwritable, too long, a full disk), or running out of
  memory); anything else is a bug and keeps its traceback.
* exit 130 on Ctrl-C, with one line (during start-up too: see ``maedet_launch``).
* ``-v`` / ``-q`` set the level of the ``maedet`` logger, which library code uses instead of printing; log lines
  read ``maedet-<tool>: <message>`` (no source file and line).
* ``--version`` on every tool.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import MaeDetError, printable

__all__ = [
    "HelpFormatter",
    "MaeDetArgumentParser",
    "add_subparsers",
    "add_verbosity",
    "configure_logging",
    "make_parser",
    "run_cli",
]

LOGGER = logging.getLogger("maedet")


def _one_line(text: str) -> str:
    """One line for the terminal: whitespace collapsed, control characters from file contents escaped."""
    return printable(" ".join(str(text).split()))


class MaeDetArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (``prog: error: …``, exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        # The tool's name alone (``maedet-bench: error:``, not ``maedet-bench profile: error:``): one rule for
        # every error line of every tool and subcommand, whoever raised it.
        sys.stderr.write(f"{self.prog.split()[0]}: error: {_one_line(message)}\n")
        raise SystemExit(2)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where it informs: not to on/off flags (``--no-check (default: True)`` reads
    backwards), not where the default is None or an empty list, and not where the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                                   argparse._CountAction, argparse._VersionAction, argparse._HelpAction))  # fmt: skip
        empty = action.default is None or action.default == argparse.SUPPRESS or action.default == []
        if flag or empty or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from . import __version__

    return __version__


def make_parser(prog: str, description: str) -> MaeDetArgumentParser:
    """A parser with ``--version`` and ``-v/-q``; tools add their own options and subcommands to it."""
    parser = MaeDetArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog} {_version()}")
    add_verbosity(parser)
    return parser


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    group.add_argument("-q", "--quiet", action="count", default=0, help="only errors")


def add_subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Subcommands in the same style everywhere; each subparser also takes -v/-q."""
    return parser.add_subparsers(dest="command", required=True, parser_class=MaeDetArgumentParser)


class _PlainFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{self.prog}: " if record.levelno < logging.WARNING else f"{self.prog}: {record.levelname.lower()}: "
        return prefix + printable(record.getMessage())


def configure_logging(prog: str, verbose: int = 0, quiet: int = 0) -> None:
    """Route the ``maedet`` logger to stderr as ``prog: message`` at the level -v/-q ask for."""
    level = logging.INFO
    if verbose >= 2:
        level = logging.DEBUG
    elif quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter(prog))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


_PATH_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EROFS,
     errno.ENOSPC, errno.EDQUOT, errno.ELOOP, errno.EEXIST, errno.EXDEV, errno.ENXIO}
)  # fmt: skip


def _is_path_error(exc: OSError) -> bool:
    """An OS error about a path the user gave (missing, unwritable, full disk...), not a bug in our code."""
    return exc.errno in _PATH_ERRNOS or getattr(exc, "filename", None) is not None


def _os_error_sentence(exc: OSError) -> str:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or type(exc).__name__}{where}."


def run_cli(
    parser: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``handler(args)`` and turn our errors into one sentence and an exit code."""
    prog = parser.prog.split()[0]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    configure_logging(prog, getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    try:
        return int(handler(args) or 0)
    except MaeDetError as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; no output file was left half-written.\n")
        return 130
    except OSError as exc:
        if not _is_path_error(exc):
            raise
        sys.stderr.write(f"{prog}: error: {_one_line(_os_error_sentence(exc))}\n")
        return 2
    except MemoryError:
        sys.stderr.write(f"{prog}: error: ran out of memory; try a smaller input, batch or model.\n")
        return 2
