"""Numbers on the command line are checked by argparse against their range (issue 17.4): a count or a size of zero
or below is a usage error in one line, not a silent empty run or a nonsense figure."""

from __future__ import annotations

import argparse

import pytest

from maedet.cli import int_range, positive_int


def test_int_range_accepts_its_range_and_refuses_the_rest() -> None:
    assert positive_int("1") == 1 and int_range(32, 64)("64") == 64
    for parse, text in ((positive_int, "0"), (positive_int, "-3"), (int_range(32, 64), "65"), (positive_int, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def _usage_error(
    capsys: pytest.CaptureFixture[str], code: int, option: str, expected: str = "expected a whole number"
) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and f"argument {option}" in err and expected in err, err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_limit(value: str, tmp_path, capsys) -> None:
    from maedet.detect.cli import eval_main

    argv = ["--ann", str(tmp_path / "a.json"), "--images", str(tmp_path), "--model", "maedet_s_gfl", "--limit", value]
    _usage_error(capsys, eval_main(argv), "--limit")


@pytest.mark.parametrize("value", ["0", "-480"])
def test_search_score_resolution(value: str, capsys) -> None:
    from maedet.search.cli import main

    _usage_error(capsys, main(["score", "maedet_s", "--resolution", value]), "--resolution", "an input size")


def test_detect_size(tmp_path, capsys) -> None:
    from maedet.detect.cli import detect_main

    code = detect_main(
        [str(tmp_path), "--model", "maedet_s_gfl", "--test-scale", "1", "1", "--out", str(tmp_path / "o")]
    )
    _usage_error(capsys, code, "--test-scale", "expected a side length in pixels at least 32, got 1")
    assert not (tmp_path / "o").exists()


def test_bench_threads(capsys) -> None:
    from maedet.bench.cli import main

    _usage_error(capsys, main(["--models", "resnet18", "--threads", "0"]), "--threads")
    _usage_error(capsys, main(["profile", "--threads", "0", "--out", "t.json"]), "--threads")
