"""Ctrl-C during training: a resumable checkpoint, exit 130 with one line, and --resume finishes the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_STRUCTURE, make_shapes

pytestmark = pytest.mark.slow  # see make test-fast


def _start_after_one_epoch(shapes: Path, out: Path, *extra: str, new_group: bool = False) -> subprocess.Popen:
    """A 50-epoch maedet-train run on the tiny set, returned once its first epoch is written."""
    tool = str(Path(sys.executable).with_name("maedet-train"))
    argv = [tool, "-q", "--recipe", "demo", "--model", "gfl", "--structure", TINY_STRUCTURE,
            "--data", str(shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(out),
            "--device", "cpu", "--short-range", "64", "64", "--long-max", "64", "--batch-size", "2", "--epochs", "50",
            "--fpn-channels", "32", "--stacked-convs", "1", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, start_new_session=new_group)
    deadline = time.monotonic() + 600
    while not (out / "metrics.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return proc


def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path: Path):
    shapes = make_shapes(tmp_path / "shapes", train=8, val=4, size=64)
    out = tmp_path / "run"
    tool = str(Path(sys.executable).with_name("maedet-train"))
    proc = _start_after_one_epoch(shapes, out)  # Ctrl-C lands inside a later epoch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "resumable checkpoint" in lines[0] and f"--resume {out}" in lines[0]
    state = torch.load(out / "last.pt", weights_only=True)
    assert 1 <= state["epoch"] < 50 and state["step"] == 4 * state["epoch"] + state["batches_done"]
    resumed = subprocess.run([tool, "-q", "--resume", str(out), "--max-minutes", "1e-9"], capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    after = torch.load(out / "last.pt", weights_only=True)
    assert after["epoch"] == state["epoch"] + 1 and after["batches_done"] == 0
    assert after["step"] == 4 * after["epoch"]


def test_sigterm_to_the_whole_process_group_with_loader_workers(tmp_path: Path):
    """``timeout``, a job scheduler or ``kill -- -PGID`` signal every process of the group, loader workers too: the
    workers must not die under the main process (a DataLoader traceback); the run stops resumably with 143."""
    import os

    shapes = make_shapes(tmp_path / "shapes", train=8, val=4, size=64)
    out = tmp_path / "run"
    proc = _start_after_one_epoch(shapes, out, "--workers", "2", new_group=True)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "resumable checkpoint" in lines[0] and "Traceback" not in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert 1 <= state["epoch"] < 50
