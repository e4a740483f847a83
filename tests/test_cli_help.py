"""Every tool's ``--help`` reads cleanly (issue 17): no ``(default: True)`` on an on/off flag (``--no-check
(default: True)`` reads backwards), no default said twice (``(default 4) (default: 4.0)``), no option without help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from maedet.bench.cli import build_parser as bench_parser
from maedet.bench.cli import build_profile_parser
from maedet.detect.cli import build_detect_parser, build_eval_parser
from maedet.export.cli import build_parser as export_parser
from maedet.search.cli import _parser as search_parser
from maedet.zoo.convert import _parser as convert_parser

TOOLS = {
    "maedet-bench": bench_parser,
    "maedet-bench profile": build_profile_parser,
    "maedet-export": export_parser,
    "maedet-detect": build_detect_parser,
    "maedet-eval": build_eval_parser,
    "maedet-convert": convert_parser,
    "maedet-search": search_parser,
}


def _with_subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{parser.prog} {name}", sub


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help exactly as --help prints it (its words, after the formatter added any default)."""
    formatter = parser._get_formatter()
    formatter.add_argument(action)
    lines = formatter.format_help().splitlines()
    return " ".join(" ".join(lines).split()[len(formatter._format_action_invocation(action).split()) :])


def _actions(build) -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for prog, parser in _with_subcommands(build()):
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield prog, parser, action


@pytest.mark.parametrize("tool", TOOLS)
def test_every_option_has_help_said_once(tool) -> None:
    problems = []
    for prog, parser, action in _actions(TOOLS[tool]):
        name = "/".join(action.option_strings) or action.dest
        text = _option_help(parser, action)
        if not action.help:
            problems.append(f"{prog} {name}: no help")
        if "(default: True)" in text or "(default: False)" in text:
            problems.append(f"{prog} {name}: {text}")
        if text.lower().count("default") > 1:
            problems.append(f"{prog} {name}: the default twice: {text}")
    assert not problems, "\n".join(problems)


def test_the_whole_help_text_of_the_flags_named_in_the_issue(capsys) -> None:
    from maedet.export.cli import main

    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: True)" not in text and "(default: 4.0)" not in text
    assert "--batch-size BATCH images per run" in text and "--opset OPSET ONNX opset to write (default: 18)" in text
