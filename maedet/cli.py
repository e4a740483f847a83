"""One runner for every command line tool: the same error format, exit codes, verbosity and ``--version``.

* ``maedet-<tool>: error: <one sentence>`` on stderr and exit 2 for bad input (:class:`MaeDetError`, an argparse
  usage error, an OS error on a path the user gave (missing, unwritable, too long, a full disk), or running out of
  memory); anything else is a bug and keeps its traceback.
* exit 130 on Ctrl-C, with one line (during start-up too: see ``maedet.launch``); SIGTERM (``kill``, a job
  scheduler, a container stop) is handled the same way and exits 143 (128 + 15, the shell's convention for a
  process ended by signal 15). Either way the work unwinds, so every temporary output file is removed.
* stdout and stderr never fail on a character their encoding lacks (``PYTHONIOENCODING=ascii`` and a non-ASCII
  path): such characters are written as backslash escapes.
* ``-v`` / ``-q`` set the level of the ``maedet`` logger, which library code uses instead of printing; log lines
  read ``maedet-<tool>: <message>`` (no source file and line).
* ``--version`` on every tool.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import MaeDetError, printable

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "HelpFormatter",
    "MaeDetArgumentParser",
    "Terminated",
    "add_modes",
    "add_subparsers",
    "add_verbosity",
    "configure_logging",
    "deprecated_alias",
    "int_range",
    "make_parser",
    "positive_int",
    "progress_bar",
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


MAX_NUMBER_CHARS = 32  # int() converts up to 4300 digits and argparse would echo them all back


def _shown_number(text: str) -> str:
    return repr(text) if len(text) <= MAX_NUMBER_CHARS else f"a {len(text)}-character value"


def int_range(low: int, high: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse ``type`` for a whole number from ``low`` to ``high`` (inclusive; None: no upper bound): out of
    range is a usage error that quotes at most a few characters of a bad value."""

    def parse(text: str) -> int:
        try:
            if len(text.strip()) > MAX_NUMBER_CHARS:
                raise ValueError
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {_shown_number(text)}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low:,} to {high:,}" if high is not None else f"at least {low:,}"
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {value:,}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its own messages
    return parse


positive_int = int_range(1)


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


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: says on stderr (one line) which name to use, then does what the new one does."""

    def __init__(self, *args: Any, target: argparse.Action, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        tool = parser.prog.split()[0]
        sys.stderr.write(f"{tool}: warning: {option_string} is an old spelling; use {self.new} (the old one goes in "
                         "the next release).\n")  # fmt: skip
        self.target(parser, namespace, values, option_string)


def deprecated_alias(container: argparse._ActionsContainer, old: str, new: str) -> argparse.Action:
    """Keep ``old`` working for one release as a hidden spelling of the option ``new`` (already added to
    ``container``, a parser or a group): same values, same destination, plus a one-line warning naming ``new``.

    Hidden from ``--help`` so that help shows one name per idea; pass the group ``new`` is in (a mutually
    exclusive group, say) to keep the alias under the same rules."""
    target = container._option_string_actions.get(new)
    if target is None:
        raise ValueError(f"deprecated_alias: {new} is not an option of this parser")
    return container.add_argument(
        old,
        action=_DeprecatedAlias,
        target=target,
        new=new,
        dest=target.dest,
        nargs=target.nargs,
        type=target.type,
        choices=target.choices,
        metavar=target.metavar,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


_GLOBAL_DESTS = frozenset({"help", "version", "verbose", "quiet"})


class _ModesAction(argparse._SubParsersAction):
    """Subcommands of a tool whose plain form runs its main job: an option of the main job given before a mode
    (``maedet-bench --quick profile``) would be silently dropped, so it is refused in one line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        mode = values[0]
        given = [
            action.option_strings[-1]
            for action in parser._actions
            if action.option_strings
            and action.dest not in _GLOBAL_DESTS
            and action.default is not argparse.SUPPRESS  # an old spelling: its new name's action tells
            and getattr(namespace, action.dest, action.default) != action.default
        ]
        if given:
            tool = parser.prog.split()[0]
            parser.error(
                f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of {tool} itself, not "
                f"of '{mode}'; give {mode}'s options after it ({tool} {mode} --help lists them)."
            )
        super().__call__(parser, namespace, values, option_string)


def add_modes(parser: argparse.ArgumentParser, title: str = "modes") -> argparse._SubParsersAction:
    """Optional subcommands (real argparse subparsers) for a tool that, given none, runs its main job with the
    options of ``parser``; ``args.command`` is None then. Each mode's parser takes -v/-q too."""
    return parser.add_subparsers(
        title=title, dest="command", required=False, action=_ModesAction, parser_class=MaeDetArgumentParser
    )


def progress_bar() -> Progress:
    """The tools' progress bar on stderr (stdout stays for results): description, bar, n/total, elapsed, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True)


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
     errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ELOOP, errno.EEXIST, errno.EXDEV, errno.ENXIO}
)  # fmt: skip


def _is_path_error(exc: OSError) -> bool:
    """An OS error about a path the user gave (missing, unwritable, full disk...), not a bug in our code."""
    return exc.errno in _PATH_ERRNOS or getattr(exc, "filename", None) is not None


def _os_error_sentence(exc: OSError) -> str:
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or type(exc).__name__}{where}."


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so that it unwinds (and removes its temporary files) as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


@contextlib.contextmanager
def _terminate_like_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the tool runs (signal handlers can only be set in the main thread;
    elsewhere, as under a test runner's worker thread, the default stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _escape_unencodable_output() -> None:
    """Characters the console's encoding lacks become backslash escapes instead of a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def run_cli(
    parser: argparse.ArgumentParser,
    handler: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``handler(args)`` and turn our errors into one sentence and an exit code."""
    prog = parser.prog.split()[0]
    _escape_unencodable_output()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    configure_logging(prog, getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    try:
        with _terminate_like_interrupt():
            return int(handler(args) or 0)
    except MaeDetError as exc:
        sys.stderr.write(f"{prog}: error: {_one_line(str(exc))}\n")
        return 2
    except Terminated:
        sys.stderr.write(f"{prog}: terminated (SIGTERM); no output file was left half-written.\n")
        return 143
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
