"""The shared command runner under hostile input (issue 12): its last nets, a refused search that leaves its folder as
it found it, and the bench's memory estimate before any model is built at full size."""

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

pytestmark = pytest.mark.slow  # see make test-fast


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


# --------------------------------------------------------------------- issue 17: full disks, signals, encodings
_WRITER = """
import sys
from pathlib import Path
from maedet.cli import make_parser, run_cli
from maedet.fileio import atomic_output_dir, atomic_write_bytes

def handler(args):
    out = Path(sys.argv[1])
    if sys.argv[2] == "file":
        atomic_write_bytes(out / "big.bin", b"x" * 4_000_000)
    else:  # a library writer (safetensors) into a staged folder, as maedet-convert does
        import torch
        from safetensors.torch import save_file
        with atomic_output_dir(out / "folder") as staging:
            save_file({"w": torch.zeros(1_000_000)}, str(staging / "model.safetensors"))
    return 0

sys.exit(run_cli(make_parser("maedet-test", "writes too much"), handler, []))
"""


def _file_size_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))  # Python ignores SIGXFSZ: writes fail with EFBIG


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_write_past_the_file_size_limit_is_one_sentence_and_leaves_nothing(kind: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", _WRITER, str(out), kind],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maedet-test: error: could not write the output")
    assert "File too large" in lines[0] and "nothing was written" in lines[0]
    assert list(out.iterdir()) == []  # no temporary file or staging folder left behind


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from maedet.cli import make_parser, run_cli
from maedet.fileio import atomic_output

def handler(args):
    with atomic_output(Path(sys.argv[1]) / "result.bin") as tmp:
        tmp.write_bytes(b"half of it")
        print("writing", flush=True)
        time.sleep(120)
    return 0

sys.exit(run_cli(make_parser("maedet-test", "writes slowly"), handler, []))
"""


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, the shell's convention
    assert err.strip() == "maedet-test: terminated (SIGTERM); no output file was left half-written."
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_an_export_leaves_no_temporary_file(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    tool = Path(sys.executable).parent / "maedet-export"
    proc = subprocess.Popen(
        [str(tool), "maedet_s", "--input-size", "64", "64", "--onnx", str(tmp_path / "m.onnx")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not any(p.name.endswith(".maedet-tmp") for p in tmp_path.iterdir()) and proc.poll() is None:
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal arrived: nothing to judge
        pytest.skip("the export finished before SIGTERM arrived")
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_an_ascii_console_with_a_non_ascii_path_does_not_crash(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    structure = tmp_path / "strüctüre.json"
    shutil.copy(Path(__file__).resolve().parents[1] / "zoo" / "structures" / "maedet_s.json", structure)
    tool = Path(sys.executable).parent / "maedet-search"
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    run = subprocess.run([str(tool), "score", str(structure)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "str\\xfcct\\xfcre" in run.stdout  # written as escapes, not refused
    missing = subprocess.run(
        [str(tool), "score", str(tmp_path / "nöne.json")], capture_output=True, text=True, timeout=300, env=env
    )
    assert missing.returncode == 2 and missing.stderr.startswith("maedet-search: error: ")
    assert "n\\xf6ne.json" in missing.stderr
