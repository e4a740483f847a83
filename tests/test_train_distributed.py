"""Two gloo processes × 2 images equal one process × 4 images (with SyncBN); a resumed run equals a straight one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_STRUCTURE, make_shapes, tiny_settings

from maedet.train import resume, train

pytestmark = pytest.mark.slow  # see make test-fast


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=8, val=4, size=64)


def _state(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def _losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _torchrun_two_processes(shapes: Path, out: Path) -> None:
    """The same run through the real launcher: torchrun, 2 CPU processes (gloo), 2 images each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "maedet.train", "--recipe", "demo", "--model", "gfl", "--structure", TINY_STRUCTURE,
               "--data", str(shapes / "train.json"), "--images", str(shapes / "train"), "--out", str(out),
               "--device", "cpu", "--lr", "0.08", "--warmup-iterations", "2", "--steps", "100", "--epochs", "2",
               "--short-range", "64", "64", "--long-max", "64", "--flip", "0", "--batch-size", "2",
               "--fpn-channels", "32", "--stacked-convs", "1", "--sync-bn", "--no-channels-last", "-q"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_processes_equal_one_with_sync_bn(shapes: Path, tmp_path: Path):
    single = tmp_path / "one"
    train(tiny_settings(shapes, single, batch_per_process=4))
    double = tmp_path / "two"
    _torchrun_two_processes(shapes, double)
    one, two = _state(single), _state(double)
    assert two["world"] == 2 and one["world"] == 1 and one["step"] == two["step"] == 4
    for a, b in zip(_losses(single), _losses(double), strict=True):  # the loss terms of every epoch
        for name in ("loss_cls", "loss_bbox", "loss_dfl"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6)
    for key, value in one["model"].items():  # weights and BN statistics after 4 steps
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for index, state in one["optimizer"]["state"].items():  # momentum buffers: the history of the gradients
        torch.testing.assert_close(two["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"],
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_resume_is_bit_identical(shapes: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    train(tiny_settings(shapes, straight, flip=0.5, short_range=(48, 64)))
    split = tmp_path / "split"
    settings = tiny_settings(shapes, split, flip=0.5, short_range=(48, 64))
    settings.max_minutes = 1e-9  # ends after the first epoch, normally
    first = train(settings)
    assert first.epochs == 1 and (split / "detector" / "model.safetensors").is_file()
    second = resume(split)
    assert second.epochs == 2
    a, b = _state(straight), _state(split)
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(b["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert [r["loss"] for r in _losses(straight)] == [r["loss"] for r in _losses(split)]


def test_channels_last_trains_the_same_weights(shapes: Path, tmp_path: Path):
    """The NHWC layout (the default, for speed) changes the order of the sums only: after 4 steps the weights, the BN
    statistics and the saved detector match a contiguous run to float tolerance, and the saved tensors are plain."""
    from safetensors.torch import load_file

    runs = {}
    for layout in (True, False):
        settings = tiny_settings(shapes, tmp_path / str(layout), batch_per_process=4)
        settings.channels_last = layout
        train(settings)
        runs[layout] = _state(tmp_path / str(layout))
    for key, value in runs[False]["model"].items():
        torch.testing.assert_close(runs[True]["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    saved = load_file(str(tmp_path / "True" / "detector" / "model.safetensors"))
    assert all(t.is_contiguous() for t in saved.values())
