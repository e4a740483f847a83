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


# Each renamed flag of the tools: (parser, argv with the new name, the old spelling, the new one, dest, value).
def _search_parser():
    from maedet.search.cli import _parser

    return _parser()


def _bench_parser():
    from maedet.bench.cli import build_parser

    return build_parser()


def _detect_parser():
    from maedet.detect.cli import build_detect_parser

    return build_detect_parser()


def _eval_parser():
    from maedet.detect.cli import build_eval_parser

    return build_eval_parser()


def _train_parser():
    from maedet.train.cli import _parser

    return _parser()


RUN = ["run", "--out", "o"]
DETECT = ["x.png", "--out", "o"]
EVAL = ["--ann", "a.json", "--images", "i"]
RENAMED = [  # (parser, the other arguments, new name, its values, old spelling, dest, parsed value)
    (_search_parser, RUN, "--candidates-per-step", ["4"], "--batch", "candidates_per_step", 4),
    (_search_parser, RUN, "--forward-batch-size", ["2"], "--forward-batch", "forward_batch_size", 2),
    (_search_parser, ["score", "f"], "--latency-batch", ["32"], "--batch", "latency_batch", 32),
    (_search_parser, ["pareto", "--out", "o"], "--latency-batch", ["32"], "--batch", "latency_batch", 32),
    (_bench_parser, [], "--iterations", ["3"], "--iters", "iterations", 3),
    (_detect_parser, DETECT, "--batch-size", ["4"], "--batch", "batch_size", 4),
    (_eval_parser, EVAL, "--batch-size", ["4"], "--batch", "batch_size", 4),
    (_detect_parser, DETECT, "--test-scale", ["640x480"], "--size", "test_scale", (640, 480)),
    (_eval_parser, EVAL, "--test-scale", ["640", "480"], "--size", "test_scale", (640, 480)),
    (_train_parser, [], "--batch-size", ["4"], "--batch", "batch_per_process", 4),
    (_train_parser, [], "--warmup-iterations", ["50"], "--warmup-iters", "warmup_iters", 50),
    (_train_parser, [], "--test-scale", ["640", "480"], "--eval-scale", "eval_scale", (640, 480)),
]


def _id(case: tuple) -> str:
    return f"{case[0]().prog}:{case[4]}->{case[2]}"


@pytest.mark.parametrize(("build", "argv", "new", "values", "old", "dest", "value"), RENAMED, ids=map(_id, RENAMED))
def test_a_renamed_flag_works_and_its_old_spelling_warns(build, argv, new, values, old, dest, value, capsys) -> None:
    assert getattr(build().parse_args([*argv, new, *values]), dest) == value
    assert capsys.readouterr().err == ""
    assert getattr(build().parse_args([*argv, old, *values]), dest) == value
    assert capsys.readouterr().err.splitlines() == [
        f"{build().prog.split()[0]}: warning: {old} is an old spelling; use {new} (the old one goes in the next "
        "release)."
    ]


SQUARE_SIZE_FLAGS = [
    (_search_parser, ["score", "f"], "--resolution", "resolution"),
    (_search_parser, ["score", "f", "--latency-table", "v100-fp16"], "--input-size", "input_size"),
    (_search_parser, RUN, "--forward-resolution", "forward_resolution"),
    (_bench_parser, ["profile"], "--input-size", "input_size"),
]


@pytest.mark.parametrize(("build", "argv", "flag", "dest"), SQUARE_SIZE_FLAGS, ids=lambda v: str(v))
@pytest.mark.parametrize("spelling", [["320"], ["320x320"], ["320", "320"]])
def test_a_square_size_flag_reads_the_one_size_grammar(build, argv, flag, dest, spelling) -> None:
    assert getattr(build().parse_args([*argv, flag, *spelling]), dest) == 320


@pytest.mark.parametrize(("build", "argv", "flag", "dest"), SQUARE_SIZE_FLAGS, ids=lambda v: str(v))
def test_a_square_size_flag_refuses_a_non_square_size_in_one_line(build, argv, flag, dest, capsys) -> None:
    with pytest.raises(SystemExit):
        build().parse_args([*argv, flag, "320", "480"])
    assert capsys.readouterr().err.splitlines() == [
        f"{build().prog.split()[0]}: error: argument {flag}: this takes one square size such as 640 (or 640x640), "
        "not 320x480"
    ]


def test_bench_profile_is_a_subcommand_and_plain_bench_still_runs_the_benchmark(capsys) -> None:
    plain = _bench_parser().parse_args(["--quick", "--rounds", "3"])
    assert (plain.command, plain.quick, plain.rounds) == (None, True, 3)
    profile = _bench_parser().parse_args(["-v", "profile", "--rounds", "7", "--out", "t.json"])
    assert (profile.command, profile.rounds, profile.out, profile.verbose) == ("profile", 7, "t.json", 1)
    assert "profile a latency target" in " ".join(_bench_parser().format_help().split())


def test_a_bench_option_before_profile_is_refused_not_dropped(capsys) -> None:
    from maedet.bench.cli import main

    assert main(["--quick", "--rounds", "3", "profile", "--out", "t.json"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "maedet-bench: error: --rounds, --quick are options of maedet-bench itself, not of 'profile'; give "
        "profile's options after it (maedet-bench profile --help lists them)."
    ]


def test_bench_backends_take_a_list_spaced_or_comma_separated() -> None:
    from maedet.bench.cli import _backend_spec

    spaced = _bench_parser().parse_args(["--backends", "torch-eager", "ort-cpu"])
    commas = _bench_parser().parse_args(["--backends", "torch-eager,ort-cpu"])
    assert _backend_spec(spaced) == _backend_spec(commas) == "torch-eager,ort-cpu"


@pytest.mark.parametrize("build", [_detect_parser, _eval_parser, _train_parser], ids=["detect", "eval", "train"])
@pytest.mark.parametrize(
    ("spelling", "scale"), [(["640"], (640, 640)), (["1333x800"], (1333, 800)), (["1333", "800"], (1333, 800))]
)
def test_the_test_scale_reads_the_one_size_grammar_in_detect_eval_and_train(build, spelling, scale) -> None:
    argv = {_detect_parser: DETECT, _eval_parser: EVAL, _train_parser: []}[build]
    args = build().parse_args([*argv, "--test-scale", *spelling])
    assert (args.eval_scale if build is _train_parser else args.test_scale) == scale
