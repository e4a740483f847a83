"""Issue 12: the shared runner's last nets, a refused search that leaves its folder as it found it, and the bench's
memory estimate before any model is built at full size."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest

from maedet.bench.errors import BenchError
from maedet.bench.memory_check import check_bench_memory
from maedet.bench.models import parse_model
from maedet.cli import make_parser, run_cli
from maedet.search.cli import main as search_main


def _run(handler, capsys) -> tuple[int, str]:
    code = run_cli(make_parser("maedet-test", "a test tool"), handler, [])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENAMETOOLONG, "File name too long", "/tmp/" + "n" * 300),
        OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.onnx"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["name-too-long", "read-only", "disk-full"],
)
def test_os_errors_about_paths_are_one_sentence(exc: OSError, capsys) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    code, err = _run(handler, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"maedet-test: error: {exc.strerror}")


def test_running_out_of_memory_is_one_sentence(capsys) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise MemoryError

    code, err = _run(handler, capsys)
    assert code == 2
    assert err == "maedet-test: error: ran out of memory; try a smaller input, batch or model.\n"


def test_an_os_error_that_is_a_bug_keeps_its_traceback(capsys) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise OSError("an internal failure with no path")

    with pytest.raises(OSError, match="internal failure"):
        _run(handler, capsys)


def test_a_refused_search_leaves_an_existing_folder_as_it_found_it(tmp_path: Path, capsys) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    out = tmp_path / "out"
    out.mkdir()
    code = search_main(["run", "--iterations", "10", "--init", str(nested), "--out", str(out)])
    assert code == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no lock file left behind


def test_bench_refuses_what_cannot_fit_before_building_anything() -> None:
    resnet = parse_model("resnet18")
    check_bench_memory([resnet], [((64, 64), 1)])  # small: fits anywhere
    with pytest.raises(BenchError, match=r"measuring resnet18 at 100000×3×64×64 needs about .* GiB of memory"):
        check_bench_memory([resnet], [((64, 64), 1), ((64, 64), 100_000)])
    detector = parse_model("maedet_s_gfl")
    with pytest.raises(BenchError, match="maedet_s_gfl at 4096×3×800×1088"):
        check_bench_memory([detector], [((800, 1088), 4096)])
