"""Bad requests to maedet-train: one sentence on stderr, exit 2, and no output folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import TINY_STRUCTURE, make_shapes

from maedet.train.cli import main

pytestmark = pytest.mark.slow  # see make test-fast


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=8, val=4, size=64)


def _args(shapes: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["--recipe", "demo", "--model", "gfl", "--structure", TINY_STRUCTURE,
            "--data", str(data or shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(out),
            "--device", "cpu", "--short-range", "64", "64", "--long-max", "64", "--batch-size", "4", "--epochs", "1",
            "--fpn-channels", "32", "--stacked-convs", "1", *extra]  # fmt: skip


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("maedet-train: error:")]
    assert len(errors) == 1 and words in errors[0], err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--num-classes", "3"], "does not fit the data"), (["--batch-size", "16"], "larger than the 8 training images"),
     (["--amp", "bf16"], "needs a CUDA device"), (["--lr", "-1"], "lr must be positive"),
     (["--steps", "5", "3"], "lr steps must increase"), (["--val-data", "x.json"], "go together"),
     (["--short-range", "20000", "20000", "--long-max", "40000"], "of memory (estimated before running)"),
     (["--clip-grad", "0"], "--clip-grad must be a positive norm")],
)  # fmt: skip
def test_bad_requests_are_refused_before_anything_is_written(shapes, tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    _refused(capsys, _args(shapes, out, *extra), words)
    assert not out.exists()


def test_empty_annotation_file(shapes, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    _refused(capsys, _args(shapes, tmp_path / "run", data=empty), "empty.json")
    assert not (tmp_path / "run").exists()


def test_unreadable_image_is_named(shapes, tmp_path, capsys):
    data = json.loads((shapes / "train.json").read_text())
    broken = tmp_path / "images"
    broken.mkdir()
    for image in data["images"]:
        (broken / image["file_name"]).write_bytes((shapes / "train" / image["file_name"]).read_bytes())
    name = data["images"][3]["file_name"]
    (broken / name).write_bytes(b"not an image at all")
    argv = _args(shapes, tmp_path / "run")
    argv[argv.index("--images") + 1] = str(broken)
    _refused(capsys, argv, name)
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_another_run_is_refused(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "settings.json").write_text("{}")
    _refused(capsys, _args(shapes, out), "--resume")
    assert [p.name for p in out.iterdir()] == ["settings.json"]


def test_resume_needs_a_run(tmp_path, capsys):
    _refused(capsys, ["--resume", str(tmp_path)], "no maedet-train run to resume")


def test_the_installed_tool_answers_in_one_line(shapes, tmp_path):
    """The console script itself: exit 2, one stderr line, nothing written."""
    out = tmp_path / "run"
    tool = Path(sys.executable).with_name("maedet-train")
    done = subprocess.run([str(tool), "-q", *_args(shapes, out, "--num-classes", "2")], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("maedet-train: error:"), done.stderr
    assert not out.exists()
