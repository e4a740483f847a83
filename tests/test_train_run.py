"""A short training run on the synthetic set: the loss falls, and its outputs are what the other tools take."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import make_shapes, tiny_settings

from maedet.train import train
from maedet.zoo import create_detector

pytestmark = pytest.mark.slow  # see make test-fast

TOOLS = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"), train=8, val=4, size=64)


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "out"
    settings = tiny_settings(shapes, out, val=True, epochs=6, eval_every=3, warmup_iters=3, flip=0.5, fpn_channels=64)
    settings.ema, settings.ema_decay = True, 0.5
    return train(settings), out


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, timeout=600)


def test_the_loss_falls_and_every_output_is_written(trained):
    result, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 7)) and result.epochs == 6
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= records[2].keys() and "AP" not in records[1]
    assert set(result.final_ap) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 6 and state["ema"] is not None and (out / "best.pt").is_file()
    card = (out / "detector" / "README.md").read_text()
    assert "trained by `maedet-train`" in card and "recipe `demo`, 6" in card and "AP50" in card


def test_the_detector_folder_loads_with_the_ema_weights(trained):
    _, out = trained
    detector = create_detector(f"local-dir:{out / 'detector'}")
    state = torch.load(out / "last.pt", weights_only=True)
    for key, value in detector.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key
    assert detector.num_classes == 6 and detector.build_args["fpn_channels"] == 64


def test_eval_and_export_take_the_folder_as_it_is(trained, shapes, tmp_path):
    result, out = trained
    folder = out / "detector"
    val = ("--ann", str(shapes / "val.json"), "--images", str(shapes / "val"), "--test-scale", "64", "64")
    done = _tool("maedet-eval", "--checkpoint", str(folder), *val, "--json", str(tmp_path / "ap.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ap.json").read_text())["AP"] == pytest.approx(result.final_ap["AP"])
    onnx = tmp_path / "det.onnx"
    done = _tool("maedet-export", str(folder), "--onnx", str(onnx), "--input-size", "64", "64")  # the printed path
    assert done.returncode == 0, done.stderr
    done = _tool("maedet-eval", "--onnx", str(onnx), *val, "--json", str(tmp_path / "onnx.json"))
    assert done.returncode == 0, done.stderr
    onnx_ap = json.loads((tmp_path / "onnx.json").read_text())["AP"]
    assert onnx_ap == pytest.approx(result.final_ap["AP"], abs=1e-3)


def test_bench_measures_the_trained_folder_beside_the_resnet_detector(trained, tmp_path):
    from maedet.bench import run_bench

    _, out = trained
    folder = out / "detector"
    result = run_bench(
        [str(folder), f"local-dir:{folder}+nms", "resnet50_gfl"],
        "torch-eager",
        input_sizes=[(64, 64)],
        warmup=1,
        rounds=1,
        min_rounds=1,
        iterations=1,
        cache_dir=tmp_path,
    )
    assert [r.model for r in result.results] == ["out_gfl", "out_gfl+nms", "resnet50_gfl"]
    row = result.row("out_gfl", "torch-eager")
    assert row.latency.median > 0 and row.speedup["resnet50"] is not None
