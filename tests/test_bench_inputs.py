"""maedet-bench's inputs, checked before any measuring: input sizes, row names, output paths, the backend list."""

from __future__ import annotations

import os
import re

import pytest

from maedet.bench import BACKENDS, BenchError
from maedet.bench.backends import unavailable_reason_and_hint
from maedet.bench.cli import build_parser, build_profile_parser, main
from maedet.bench.naming import parse_models
from maedet.bench.outputs import check_outputs
from maedet.sizes import parse_input_size_flag
from maedet.zoo import builtin_structure


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("maedet-bench: error: "), err  # subcommands too: one rule for every error line
    return err


# ----------------------------------------------------------------------------------------------- --input-size
@pytest.mark.parametrize(
    ("tokens", "sizes"),
    [
        (["480", "640"], [(480, 640)]),  # H W: one size, as maedet-export reads it
        (["640"], [(640, 640)]),
        (["480x640"], [(480, 640)]),
        (["640,800"], [(640, 640), (800, 800)]),
        (["480x640,640"], [(480, 640), (640, 640)]),
    ],
)
def test_one_input_size_flag_is_one_size_or_a_comma_list(tokens, sizes) -> None:
    assert parse_input_size_flag(tokens) == sizes


def test_repeated_input_size_flags_add_sizes() -> None:
    args = build_parser().parse_args(["--input-size", "480", "640", "--input-size", "640"])
    assert args.input_size == [(480, 640), (640, 640)]
    args = build_parser().parse_args(["--input-size", "480x640,640", "--input-size", "640"])
    assert args.input_size == [(480, 640), (640, 640)]  # a size given twice is measured once


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-size", "480x640", "640"], "one size per flag"),
        (["--input-size", "480", "640", "800"], "one size per flag"),
        (["--input-size", "abc"], "an input size looks like"),
        (["--input-size", "480x"], "an input size looks like"),
        (["--input-size", "640,"], "empty entry"),
        (["--input-size", "0"], "must be positive"),
        (["--input-size", "16"], "too small"),
    ],
)
def test_bad_input_sizes_are_one_sentence(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    assert message in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_profile_takes_one_square_size(capsys, tmp_path) -> None:
    assert build_profile_parser().parse_args(["--input-size", "640x640"]).input_size == 640
    assert build_profile_parser().parse_args(["--input-size", "320"]).input_size == 320
    out = str(tmp_path / "t.json")
    assert main(["profile", "--input-size", "480x640", "--out", out]) == 2
    assert "square" in _one_error_line(capsys)
    assert main(["profile", "--input-size", "480", "640", "--out", out]) == 2
    _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_help_says_what_input_size_and_quick_mean(capsys) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one input size per flag" in text and "repeat the flag" in text
    assert "at least 5 interleaved rounds" in text and "about a minute" in text


# ----------------------------------------------------------------------------------------------- row names
@pytest.fixture
def two_searches(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        builtin_structure("maedet_s").save(tmp_path / folder / "best.json")
    return tmp_path


def test_two_searches_are_named_by_their_folders(two_searches) -> None:
    a, b = str(two_searches / "a" / "best.json"), str(two_searches / "b" / "best.json")
    specs = parse_models(["resnet50", a, b])
    assert [s.label for s in specs] == ["resnet50", "a", "b"]
    assert specs[1].structure == specs[2].structure == builtin_structure("maedet_s")
    assert specs[1].cache_key() != specs[2].cache_key()  # their exported files do not share a cache name
    assert [s.label for s in parse_models([f"mine={a}", b])] == ["mine", "best"]  # no clash: the stem stays


def test_name_equals_path_names_the_row(two_searches) -> None:
    a = str(two_searches / "a" / "best.json")
    assert [s.label for s in parse_models([f"first={a}", f"second={a}"])] == ["first", "second"]
    odd = two_searches / "lr=0.1"
    odd.mkdir()
    builtin_structure("maedet_s").save(odd / "x.json")
    assert parse_models([str(odd / "x.json")])[0].label == "x"  # '=' in a folder is part of the path


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["{t}/a/best.json", "{t}/a/best.json"], "was given twice"),
        (["{t}/a/x/best.json", "{t}/b/x/best.json"], "would both be named 'x'"),
        (["bad name!={t}/a/best.json"], "must use only letters"),
        (["resnet50={t}/a/best.json"], "kept for the reference model"),
        (["mine="], "names no model"),
        (["maedet_s", "maedet_s"], "a model was named twice: maedet_s."),
    ],
)
def test_clashing_or_bad_names_are_one_sentence(texts, message, two_searches) -> None:
    for folder in ("a/x", "b/x"):
        (two_searches / folder).mkdir(parents=True)
        builtin_structure("maedet_s").save(two_searches / folder / "best.json")
    with pytest.raises(BenchError, match=re.escape(message)) as info:
        parse_models([t.format(t=two_searches) for t in texts])
    assert "\n" not in str(info.value)
    if "both be named" in message:  # the sentence names both paths
        assert str(two_searches / "a/x/best.json") in str(info.value)
        assert str(two_searches / "b/x/best.json") in str(info.value)


@pytest.mark.parametrize(
    "content",
    ["[" * 100_000 + "]" * 100_000, '{"blocks": ' * 50_000 + "1" + "}" * 50_000, " " * (2 << 20) + "[]"],
    ids=["nested-list", "nested-dict", "huge"],
)
def test_nested_or_huge_structure_files_are_one_sentence(content, capsys, tmp_path) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(content)
    cache = tmp_path / "cache"
    assert main(["--structure", str(path), "--backends", "torch-eager", "--cache-dir", str(cache)]) == 2
    assert "hostile.json" in _one_error_line(capsys)
    assert not cache.exists()


# ----------------------------------------------------------------------------------------------- output paths
def test_outputs_that_cannot_be_written_are_refused_before_the_run(capsys, tmp_path) -> None:
    cache = tmp_path / "cache"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    argv = ["--models", "maedet_s", "resnet50", "--backends", "ort-cpu", "--input-size", "64", "--no-progress"]
    argv += ["--cache-dir", str(cache), "--csv", str(tmp_path / "b.csv")]
    for flag, path, message in (
        ("--json", tmp_path, "is a directory"),
        ("--json", "/proc/maedet-bench-test.json", "cannot write the JSON"),
        ("--plot", a_file / "b.png", "is not a folder"),
        ("--json", tmp_path / "b.csv", "would both be written"),
    ):
        assert main([*argv, flag, str(path)]) == 2, flag
        assert message in _one_error_line(capsys)
        assert not cache.exists()  # nothing was exported: the run never started
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_the_run(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(BenchError, match=r"not writable|refuses new files|cannot write"):
            check_outputs({"JSON": folder / "b.json"})
    finally:
        folder.chmod(0o755)


def test_missing_output_folders_are_fine_and_created_only_at_the_end(tmp_path) -> None:
    paths = check_outputs({"JSON": tmp_path / "runs" / "bench" / "b.json", "CSV": None})
    assert paths == {"JSON": tmp_path / "runs" / "bench" / "b.json"}
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------- --list-backends
def test_backend_list_never_cuts_names_and_shows_each_hint_once(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--list-backends"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    first_cells = {line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 2}
    assert set(BACKENDS) <= first_cells  # every name whole, on one line
    flat = " ".join(out.split())
    hints = {hint for b in BACKENDS.values() if (hint := unavailable_reason_and_hint(b)[1])}
    for hint in hints:
        assert flat.count(" ".join(hint.split())) == 1, hint
    assert flat.count("pip uninstall") <= 1


def test_profile_usage_errors_read_like_every_tools(capsys, tmp_path) -> None:
    """Issue 17: ``maedet-bench: error:``, not ``maedet-bench profile: error:`` (an argparse error and our own
    sentence start the same way, as in maedet-search's subcommands)."""
    assert main(["profile", "--rounds", "many", "--out", str(tmp_path / "t.json")]) == 2
    assert "argument --rounds: invalid int value: 'many'" in _one_error_line(capsys)
    assert main(["profile"]) == 2
    assert "profile needs --out FILE" in _one_error_line(capsys)


def test_make_bench_takes_bench_args() -> None:
    """Issue 17: ``make bench BENCH_ARGS=...`` passes its flags to maedet-bench (dry run: nothing is executed)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["make", "-n", "-C", str(root), "bench", "BENCH_ARGS=--threads 1 --max-time 600", "STAMP=pyproject.toml"]
    lines = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()
    bench = [line for line in lines if "maedet-bench" in line]
    assert len(bench) == 1 and bench[0].endswith("--csv runs/bench/bench.csv --threads 1 --max-time 600"), lines
