"""maedet-convert on whole detectors: a folder that rebuilds the exact detector, feeds the tools, and pushes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maedet
from maedet.detect.cli import detect_main
from maedet.errors import MaeDetError
from maedet.export.cli import main as export_main
from maedet.export.metadata import read_metadata
from maedet.zoo import PostprocessConfig, Stage, Stem, Structure
from maedet.zoo.convert import convert_checkpoint, convert_detector, main

pytestmark = pytest.mark.slow  # see make test-fast

TINY = Structure(
    Stem(3, 16, 2, 3),
    (Stage(16, 24, 2, 3, 1, 16), Stage(24, 48, 2, 3, 1, 16), Stage(48, 64, 2, 3, 1, 24), Stage(64, 96, 2, 3, 1, 32)),
)


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory, authors_detector_state) -> tuple[Path, Path]:
    """MAE-DET-S GFocalV2 for 3 classes in the authors' layout (every norm randomised), and its converted folder."""
    root = tmp_path_factory.mktemp("s3")
    state = authors_detector_state("maedet_s_gfl", seed=3, num_classes=3)
    state["bbox_head.gfl_cls.bias"] = torch.tensor([0.5, 0.0, -0.5, 0.8])
    ckpt = root / "latest.pth"
    torch.save({"meta": {"epoch": 24}, "state_dict": state}, ckpt)
    out = root / "folder"
    assert main([str(ckpt), "--model", "maedet_s_gfl", "--num-classes", "3", "--out", str(out)]) == 0
    return ckpt, out


def _assert_identical(a: maedet.GFocalV2, b: maedet.GFocalV2, x: torch.Tensor, predict: bool = True) -> None:
    """Same weights bit for bit, same raw outputs, same postprocess settings (and, with ``predict``, detections)."""
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(u, v) for u, v in zip(a(x), b(x), strict=True))
    assert a.postprocess_cfg == b.postprocess_cfg and (a.num_classes, a.strides) == (b.num_classes, b.strides)
    if predict:
        d, e = a.predict(x)[0], b.predict(x)[0]
        assert len(d) > 0 and all(torch.equal(getattr(d, f), getattr(e, f)) for f in ("boxes", "scores", "labels"))


def test_converted_detector_rebuilds_the_original_exactly(s3, capsys) -> None:
    ckpt, folder = s3
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "maedet_s_gfl" and config["num_classes"] == 3 and config["cls_channels"] == 4
    assert config["fpn_channels"] == 192 and config["strides"] == [8, 16, 32, 64, 128]
    assert config["postprocess"] == {"nms_pre": 1000, "score_thr": 0.05, "iou_thr": 0.6, "max_per_img": 100}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: object-detection" in card and "latest.pth" in card
    original = maedet.create_detector("maedet_s_gfl", checkpoint=ckpt, num_classes=3)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _assert_identical(original, maedet.create_detector(f"local-dir:{folder}"), x)
    _assert_identical(original, maedet.create_detector("maedet_s_gfl", checkpoint=folder), x, predict=False)


def test_a_searched_structure_detector_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = maedet.create_detector("gfl", structure=TINY, num_classes=3, fpn_channels=64)
    with torch.no_grad():
        model.head.cls_out.bias.fill_(0.5)
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    folder = convert_detector(tmp_path / "ours.pth", tmp_path / "folder", "gfl", tmp_path / "tiny.json", num_classes=3)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "gfl" and config["structure"] == TINY.to_dict() and config["fpn_channels"] == 64
    loaded = maedet.create_detector(f"local-dir:{folder}")
    assert loaded.backbone_kwargs["structure"] == TINY
    _assert_identical(model.eval(), loaded, torch.randn(1, 3, 64, 64))
    cfg = PostprocessConfig(score_thr=0.2)
    assert maedet.create_detector("gfl", checkpoint=folder, postprocess_cfg=cfg).postprocess_cfg == cfg


def test_folder_mistakes_are_one_sentence(s3, tmp_path, authors_checkpoint_file) -> None:
    _, folder = s3
    backbone = convert_checkpoint(authors_checkpoint_file("s"), tmp_path / "backbone", "maedet_s")
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: maedet.create_detector("maedet_m_gfl", checkpoint=folder), "holds a 'maedet_s_gfl' detector, not"),
        (lambda: maedet.create_detector(f"local-dir:{folder}", num_classes=80), "for 3 classes, not num_classes=80"),
        (lambda: maedet.create_detector(f"local-dir:{folder}", checkpoint=folder), "carries its own weights"),
        (lambda: maedet.create_detector(f"local-dir:{folder}", fpn_channels=64), "leave out fpn_channels"),
        (lambda: maedet.create_detector(f"local-dir:{backbone}"), "is not a converted detector"),
        (lambda: maedet.create_detector(f"local-dir:{tmp_path / 'empty'}"), "no converted detector there"),
    ]
    for call, expected in cases:
        with pytest.raises(MaeDetError, match=expected) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--model", "maedet_s_gfl"], "holds a backbone only"),
        (["--model", "maedet_s", "--num-classes", "3"], "--num-classes applies to detectors"),
    ],
)
def test_cli_refusals_are_one_line_and_write_nothing(extra, expected, tmp_path, capsys, authors_state_dict) -> None:
    ckpt = tmp_path / "backbone_only.pth"
    torch.save({"state_dict": authors_state_dict("s")}, ckpt)
    assert main([str(ckpt), *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maedet-convert: error:") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _offline_env(tmp_path: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return env | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home")}


def test_push_to_hub_offline_fails_in_one_sentence(s3, tmp_path) -> None:
    """The real hub client, offline: the folder is written, the push fails in one line (no traceback)."""
    ckpt, _ = s3
    out = tmp_path / "pushed"
    argv = [str(ckpt), "--model", "maedet_s_gfl", "--num-classes", "3", "--out", str(out), "--push-to-hub", "me/s3"]
    done = subprocess.run(
        [sys.executable, "-m", "maedet.zoo.convert", *argv],
        env=_offline_env(tmp_path, tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maedet-convert: error: could not push to me/s3 (OfflineModeIsEnabled")
    assert (out / "model.safetensors").is_file() and "wrote" in done.stdout
    assert f"the converted folder {str(out)!r} is kept" in err[0]  # the sentence says the folder stays (issue 17.4)


def test_hub_name_loads_from_the_cache_offline(s3, tmp_path) -> None:
    """`hf-hub:` through huggingface_hub's real client, from a local cache with the hub offline; a repo not in the
    cache fails in one sentence."""
    _, folder = s3
    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--me--s3_gfl" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "README.md"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (cache / "models--me--s3_gfl" / "refs").mkdir()
    (cache / "models--me--s3_gfl" / "refs" / "main").write_text(commit)
    script = (
        "import sys, torch, maedet\n"
        "from maedet.errors import MaeDetError\n"
        "hub = maedet.create_detector('hf-hub:me/s3_gfl')\n"
        "local = maedet.create_detector('local-dir:' + sys.argv[1])\n"
        "x = torch.randn(1, 3, 64, 64)\n"
        "assert all(torch.equal(a, b) for a, b in zip(hub(x), local(x)))\n"
        "try:\n    maedet.create_detector('hf-hub:me/missing')\n"
        "except MaeDetError as exc:\n    print('refused', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        env=_offline_env(tmp_path, cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (  # offline is said at once, in one whole sentence (issue 17)
        "refused hf-hub:me/missing is not in the local Hugging Face cache and the hub cannot be reached "
        "(HF_HUB_OFFLINE is set); download it where there is network and give its folder (local-dir:FOLDER)."
    )


def test_export_and_detect_take_a_converted_folder(s3, tmp_path, capsys) -> None:
    ckpt, folder = s3
    out = tmp_path / "det.onnx"
    assert export_main(["maedet_s_gfl", "--checkpoint", str(folder), "--onnx", str(out), "--input-size", "64", "96",
                        "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["check"]["passed"] and summary["check"]["detections"]["detections"] > 0
    assert read_metadata(out)["num_classes"] == 3
    argv = [f"local-dir:{folder}", "--onnx", str(tmp_path / "b.onnx"), "--input-size", "64", "96", "--no-check"]
    assert export_main(argv) == 0
    assert read_metadata(tmp_path / "b.onnx")["model_name"] == "maedet_s_gfl"
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    size = ["--test-scale", "128", "96"]
    assert detect_main([str(image), *size, "--checkpoint", str(folder), "--out", str(tmp_path / "f")]) == 0
    assert detect_main([str(image), *size, "--model", "maedet_s_gfl", "--num-classes", "3", "--checkpoint",
                        str(ckpt), "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    from_folder = json.loads((tmp_path / "f" / "detections.json").read_text())
    assert from_folder["annotations"] and from_folder == json.loads((tmp_path / "c" / "detections.json").read_text())


def test_python_api_converts_a_detector(s3, tmp_path) -> None:
    ckpt, folder = s3
    again = convert_detector(ckpt, tmp_path / "again", "maedet_s_gfl", num_classes=3)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()
