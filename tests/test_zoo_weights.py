"""The authors' checkpoints: exact loading through timm (file, url, local-dir, hf-hub) and the converter."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch

from maedet.zoo import checkpoint_filter_fn
from maedet.zoo.convert import convert_checkpoint, load_checkpoint, main

from conftest import authors_checkpoint, authors_state_dict


def _ours(size: str) -> dict[str, torch.Tensor]:
    """The authors' tensors under our names, derived independently of the filter (by module order)."""
    model = timm.create_model(f"maedet_{size}")
    theirs = list(authors_state_dict(size).values())
    ours = list(model.state_dict().keys())
    assert len(theirs) == len(ours)
    return dict(zip(ours, theirs, strict=True))


def _assert_loaded(model: torch.nn.Module, size: str) -> None:
    expected = _ours(size)
    state = model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_pretrained_from_authors_file(size: str, authors_checkpoint_file) -> None:
    path = authors_checkpoint_file(size)
    model = timm.create_model(f"maedet_{size}.gflv2_coco", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    _assert_loaded(model, size)
    features = timm.create_model(
        f"maedet_{size}.gflv2_coco", pretrained=True, features_only=True, pretrained_cfg_overlay={"file": str(path)}
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(features.eval()(x)[-1], model.eval().forward_features(x))


@pytest.fixture()
def http_server(tmp_path: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_pretrained_from_url(http_server, tmp_path_factory: pytest.TempPathFactory) -> None:
    root, base = http_server
    (root / "maedet-m").mkdir()
    torch.save(authors_checkpoint("m"), root / "maedet-m" / "latest.pth")
    cache = tmp_path_factory.mktemp("torch_hub")
    model = timm.create_model(
        "maedet_m.gflv2_coco",
        pretrained=True,
        pretrained_cfg_overlay={"url": f"{base}/maedet-m/latest.pth"},
        cache_dir=cache,
    )
    _assert_loaded(model, "m")
    assert (cache / "latest.pth").is_file()


def test_filter_accepts_tinynas_and_our_layouts() -> None:
    model = timm.create_model("maedet_s")
    bare = {k.removeprefix("backbone.body."): v for k, v in authors_state_dict("s").items()}
    ours = checkpoint_filter_fn(bare, model)
    assert ours.keys() == model.state_dict().keys()
    again = checkpoint_filter_fn({"state_dict": ours}, model)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_filter_names_missing_unexpected_and_misshapen_keys() -> None:
    model = timm.create_model("maedet_s")
    state = authors_state_dict("s")
    missing = dict(state)
    del missing["backbone.body.block_list.3.block_list.9.conv2.conv1.weight"]
    with pytest.raises(ValueError, match=r"1 missing backbone keys \(stages\.2\.blocks\.9\.conv2\.conv\.weight\)"):
        checkpoint_filter_fn(missing, model)
    extra = dict(state)
    extra["backbone.body.block_list.4.block_list.10.conv1.conv1.weight"] = torch.zeros(240, 2048, 1, 1)
    with pytest.raises(ValueError, match=r"unexpected backbone keys \(stages\.3\.blocks\.10\.conv1\.conv\.weight"):
        checkpoint_filter_fn(extra, model)
    with pytest.raises(ValueError, match="missing backbone keys"):
        checkpoint_filter_fn(authors_state_dict("s"), timm.create_model("maedet_m"))
    bent = dict(state)
    bent["backbone.body.block_list.2.block_list.0.conv2.conv1.weight"] = torch.zeros(120, 120, 5, 5)
    with pytest.raises(ValueError, match=r"shape mismatch in stages\.1\.blocks\.0\.conv2\.conv\.weight"):
        checkpoint_filter_fn(bent, model)
    odd = dict(state)
    odd["backbone.body.block_list.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="is not part of a MAE-DET backbone"):
        checkpoint_filter_fn(odd, model)


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


def test_unsafe_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": authors_state_dict("s"), "meta": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"refused: .* \(Unsupported global: GLOBAL test_zoo_weights.NotATensor"):
        load_checkpoint(path)
    assert main([str(path), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maedet-convert: checkpoint evil.pth was refused") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main([str(garbage), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "garbage.pth was refused" in err and "Unsupported operand" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_convert_then_local_dir(authors_checkpoint_file, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "maedet_s_coco"
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(out)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maedet_s_coco"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "maedet_s" and config["pretrained_cfg"]["first_conv"] == "stem.conv"
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    _assert_loaded(model, "s")
    features = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True)
    assert features.feature_info.channels() == [48, 272, 1024, 2048]
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_convert_searched_structure(authors_checkpoint_file, tmp_path: Path) -> None:
    """A structure file (the authors' txt) becomes a self-describing folder for the generic 'maedet' entry."""
    structure_file = tmp_path / "best_structure.txt"
    structure_file.write_text(timm.create_model("maedet_l").structure.to_authors_text())
    out = convert_checkpoint(authors_checkpoint_file("l"), tmp_path / "searched", "maedet", structure_file)
    assert json.loads((out / "config.json").read_text())["model_args"]["structure"]["blocks"][4]["out"] == 2400
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.pretrained_cfg["architecture"] == "maedet"
    _assert_loaded(model, "l")


def test_hf_hub_offline_cache(authors_checkpoint_file, tmp_path: Path) -> None:
    """`hf-hub:` through huggingface_hub's real client, resolving a repo from a local cache with the hub offline."""
    folder = convert_checkpoint(authors_checkpoint_file("m"), tmp_path / "folder", "maedet_m")
    cache = tmp_path / "hf_cache"
    repo = cache / "models--maedet--maedet_m.gflv2_coco"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "import maedet, timm, torch, sys\n"
        "m = timm.create_model('hf-hub:maedet/maedet_m.gflv2_coco', pretrained=True).eval()\n"
        "r = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()\n"
        "x = torch.randn(1, 3, 64, 64)\n"
        "assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), r.state_dict().values()))\n"
        "assert torch.equal(m(x), r(x))\n"
        "print('hub-ok', m.num_features)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "hub-ok 2048"
