"""One name per idea across the tools (issue 18): the new spelling works, and an old one still works for one
release but says on stderr, in one line, which name to use."""

from __future__ import annotations

import pytest

from maedet.cli import deprecated_alias, make_parser
from maedet.sizes import OneSizeAction


def _toy_parser():
    parser = make_parser("maedet-toy", "a parser to try the alias helper on")
    parser.add_argument("--batch-size", type=int, default=1, help="images per run")
    deprecated_alias(parser, "--batch", "--batch-size")
    parser.add_argument("--fast", action="store_true", help="go fast")
    deprecated_alias(parser, "--quick", "--fast")
    parser.add_argument("--input-size", nargs="+", action=OneSizeAction, default=(8, 8), help="one size")
    deprecated_alias(parser, "--size", "--input-size")
    return parser


def test_an_alias_does_what_the_new_name_does_and_warns_once(capsys) -> None:
    parser = _toy_parser()
    new = parser.parse_args(["--batch-size", "3", "--fast", "--input-size", "4", "5"])
    assert capsys.readouterr().err == ""
    old = parser.parse_args(["--batch", "3", "--quick", "--size", "4x5"])
    assert vars(old) == vars(new) == {"verbose": 0, "quiet": 0, "batch_size": 3, "fast": True, "input_size": (4, 5)}
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"maedet-toy: warning: {old_name} is an old spelling; use {new_name} (the old one goes in the next release)."
        for old_name, new_name in (("--batch", "--batch-size"), ("--quick", "--fast"), ("--size", "--input-size"))
    ]


def test_an_alias_keeps_the_defaults_and_is_not_in_help(capsys) -> None:
    parser = _toy_parser()
    assert parser.parse_args([]).batch_size == 1
    text = parser.format_help()
    assert "--batch-size" in text and "--batch " not in text and "--quick" not in text


def test_an_alias_checks_values_like_the_new_name(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _toy_parser().parse_args(["--batch", "many"])
    assert exc.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_an_alias_of_an_unknown_option_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="--nothing is not an option"):
        deprecated_alias(_toy_parser(), "--old", "--nothing")
