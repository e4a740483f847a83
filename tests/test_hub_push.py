"""Pushing to the hub and pulling back, with the real huggingface_hub client against a local hub server.

`maedet-train --push-to-hub` and `maedet-convert --push-to-hub` upload their folders; `hf-hub:REPO` then rebuilds
the same weights from the server through the same client the users have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import local_hub
from safetensors.torch import load_file
from train_helpers import TINY_STRUCTURE, make_shapes

pytestmark = pytest.mark.slow  # a training run and tools in subprocesses: see make test-fast

TOOLS = Path(sys.executable).parent


def _env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {"HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_local_test_token", "HF_HOME": str(tmp_path / "hf_home"),
                  "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONWARNINGS": "ignore"}  # fmt: skip


def _pull_state(repo: str, env: dict[str, str]) -> dict:
    """Rebuild the detector from ``hf-hub:REPO`` in a fresh process (HF_ENDPOINT is read at import)."""
    code = (
        "import sys, torch; from maedet.zoo import create_detector; "
        f"d = create_detector('hf-hub:{repo}'); torch.save(d.state_dict(), sys.argv[1])"
    )
    out = Path(env["HF_HOME"]) / "pulled.pt"
    done = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import torch

    return torch.load(out, weights_only=True)


def test_train_pushes_the_detector_folder_and_hf_hub_rebuilds_it(tmp_path: Path) -> None:
    import torch

    shapes = make_shapes(tmp_path / "shapes", train=8, val=4, size=64)
    out = tmp_path / "run"
    argv = ["--recipe", "demo", "--model", "gfl", "--structure", TINY_STRUCTURE, "--data", str(shapes / "train.json"),
            "--images", str(shapes / "train"), "--out", str(out), "--device", "cpu", "--short-range", "64", "64",
            "--long-max", "64", "--batch-size", "4", "--epochs", "1", "--fpn-channels", "32", "--stacked-convs", "1",
            "--push-to-hub", "me/tiny-gfl"]  # fmt: skip
    with local_hub() as hub:
        env = _env(hub.endpoint, tmp_path)
        train = [str(TOOLS / "maedet-train"), *argv]
        done = subprocess.run(train, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        pushed = hub.repos["me/tiny-gfl"]
        folder = out / "detector"
        assert set(pushed) == {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
        for name, content in pushed.items():
            assert content == (folder / name).read_bytes(), name
        assert len(hub.commits["me/tiny-gfl"]) == 1
        pulled = _pull_state("me/tiny-gfl", env)
    local = load_file(folder / "model.safetensors")
    assert pulled.keys() == local.keys()
    for key, value in local.items():
        assert torch.equal(pulled[key], value), key


def test_convert_pushes_a_backbone_with_timm_and_pulls_it_back(tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    import maedet.zoo  # noqa: F401  (registers the models with timm in this process)

    source = tmp_path / "weights.safetensors"
    save_file(timm.create_model("maedet_s").state_dict(), source)
    with local_hub() as hub:
        env = _env(hub.endpoint, tmp_path)
        argv = [str(source), "--model", "maedet_s", "--out", str(tmp_path / "folder"), "--push-to-hub", "me/s"]
        done = subprocess.run([str(TOOLS / "maedet-convert"), *argv], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert {"config.json", "model.safetensors", "README.md"} <= set(hub.repos["me/s"])
        code = (
            "import sys, torch, timm, maedet.zoo; "
            "m = timm.create_model('hf-hub:me/s', pretrained=True); torch.save(m.state_dict(), sys.argv[1])"
        )
        pulled_file = tmp_path / "pulled.pt"
        done = subprocess.run([sys.executable, "-c", code, str(pulled_file)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    pulled = torch.load(pulled_file, weights_only=True)
    local = load_file(source)
    for key, value in local.items():
        assert torch.equal(pulled[key], value), key
