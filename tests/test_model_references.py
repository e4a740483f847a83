"""The tools accept each other's outputs (issue 11.7): every model reference timm takes (``name``, ``name.tag``,
``local-dir:FOLDER``, ``hf-hub:ORG/REPO``) plus a converted folder's plain path, in export and bench, and
``--checkpoint FOLDER``. The folders here are made by ``maedet-convert`` itself (MAE-DET-S, small inputs)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from maedet.bench.cli import main as bench_main
from maedet.bench.models import parse_model
from maedet.export import ExportError
from maedet.export.cli import main as export_main
from maedet.export.model_reference import parse_model_reference, reference_structure
from maedet.zoo import builtin_structure, gmacs
from maedet.zoo.convert import main as convert_main

pytestmark = pytest.mark.slow  # see make test-fast

SIZE = (64, 64)


@pytest.fixture(scope="module")
def workdir(authors_checkpoint_file, tmp_path_factory) -> Path:
    """A folder holding ``weights/s``, written by ``maedet-convert`` from an authors'-layout MAE-DET-S file."""
    root = tmp_path_factory.mktemp("refs")
    argv = [str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(root / "weights/s")]
    assert convert_main(argv) == 0
    return root


def _features(onnx_path: Path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})


def _timm_features(folder: Path, x: torch.Tensor) -> list[np.ndarray]:
    """What timm itself computes from the converted folder (its own local-dir loading, nothing of ours)."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True).eval()
    with torch.no_grad():
        return [t.numpy() for t in model(x)]


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Equal up to float reassociation (BN folding, ONNX Runtime's kernels), relative to each map's scale."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5 * float(np.abs(w).max()))


def _one_sentence(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("local-dir:weights/s", []),  # what maedet-convert prints, relative to the working directory
        ("weights/s", []),  # the folder's plain path
        ("maedet_s", ["--checkpoint", "weights/s"]),  # --checkpoint FOLDER
    ],
)
def test_export_loads_a_converted_folder(model, extra, workdir, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(workdir)
    out = tmp_path / "s.onnx"
    argv = [model, *extra, "--onnx", str(out), "--input-size", *map(str, SIZE), "--no-check"]
    assert export_main(argv) == 0
    assert "RANDOM" not in capsys.readouterr().err  # the folder brings its weights: no random-weights warning
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    _assert_same(_features(out, x), _timm_features(workdir / "weights/s", x))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    digest = hashlib.sha256((workdir / "weights/s/model.safetensors").read_bytes()).hexdigest()
    assert (meta["weights"], meta["weights_sha256"]) == ((extra or [model])[-1], digest)


def test_bench_measures_a_converted_folder(workdir, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.chdir(workdir)
    out = tmp_path / "b.json"
    argv = ["--models", "local-dir:weights/s", "--backends", "torch-eager", "--input-size", "64x64", "--rounds", "2"]
    argv += ["--min-rounds", "1", "--iterations", "1", "--warmup", "1", "--threads", "1", "--no-progress"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert bench_main(argv) == 0, capsys.readouterr().err
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "local-dir:weights/s" and row["backend"] == "torch-eager"
    assert row["gmacs"] == pytest.approx(gmacs(builtin_structure("maedet_s"), *SIZE))


def test_every_timm_form_parses() -> None:
    assert parse_model_reference("resnet50").architecture == "resnet50"
    tagged = parse_model_reference("resnet50.a1_in1k")
    assert (tagged.architecture, tagged.create_name, tagged.folder) == ("resnet50", "resnet50.a1_in1k", None)
    assert reference_structure(parse_model_reference("maedet_s.gflv2_coco")) == builtin_structure("maedet_s")
    assert parse_model("maedet_m.gflv2_coco").structure == builtin_structure("maedet_m")
    with pytest.raises(
        ExportError, match=r"unknown model 'maedet_s\.nope': maedet_s has no tag 'nope' \(it has: gflv2_coco\)"
    ):
        parse_model_reference("maedet_s.nope")


def test_a_searched_structure_folder_brings_its_structure(authors_checkpoint_file, tmp_path) -> None:
    structure = builtin_structure("maedet_s")
    structure.save(tmp_path / "best.json")
    folder = tmp_path / "searched"
    argv = [str(authors_checkpoint_file("s")), "--structure", str(tmp_path / "best.json"), "--out", str(folder)]
    assert convert_main(argv) == 0
    ref = parse_model_reference(f"local-dir:{folder}")
    assert ref.architecture == "maedet" and reference_structure(ref) == structure
    assert parse_model(str(folder)).structure == structure


@pytest.mark.parametrize(
    ("setup", "model", "message"),
    [
        (None, "local-dir:nowhere", "model folder 'nowhere' does not exist"),
        (None, "weights/nowhere", "unknown model 'weights/nowhere': no such folder"),
        ("no_config", "local-dir:empty", "model folder 'empty' has no config.json"),
        ("no_weights", "local-dir:empty", "model folder 'empty' holds no weights"),
        ("path_structure", "local-dir:empty", "must be the structure written out as a JSON object"),
    ],
)
def test_bad_folders_are_one_sentence(setup, model, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    config = {"architecture": "maedet", "model_args": {"structure": "/dev/zero"}, "pretrained_cfg": {}}
    if setup in ("no_weights", "path_structure"):
        (empty / "config.json").write_text(json.dumps(config))
    if setup == "path_structure":
        (empty / "model.safetensors").write_bytes(b"")
    runs = (
        ("maedet-export", export_main, [model, "--onnx", "o.onnx"]),
        ("maedet-bench", bench_main, ["--models", model, "--no-progress", "--cache-dir", "cache"]),
    )
    for prog, run, argv in runs:
        assert run(argv) == 2
        assert message in _one_sentence(capsys.readouterr().err, prog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_folder_with_a_structure_file_conflicts(workdir, tmp_path, capsys) -> None:
    builtin_structure("maedet_s").save(tmp_path / "s.json")
    argv = [str(workdir / "weights/s"), "--structure", str(tmp_path / "s.json"), "--onnx", str(tmp_path / "o.onnx")]
    assert export_main(argv) == 2
    assert "has its own structure (in its config.json)" in _one_sentence(capsys.readouterr().err, "maedet-export")


def test_wrong_weights_in_a_folder_are_refused(workdir, tmp_path, capsys) -> None:
    """A folder is weights like any checkpoint: a resnet18 folder whose file holds MAE-DET-S weights does not load."""
    folder = tmp_path / "r18"
    folder.mkdir()
    cfg = {"input_size": [3, 224, 224], "first_conv": "conv1", "classifier": "fc", "num_classes": 1000}
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": cfg}))
    shutil.copy(workdir / "weights/s/model.safetensors", folder)
    assert export_main([str(folder), "--onnx", str(tmp_path / "o.onnx")]) == 2
    line = _one_sentence(capsys.readouterr().err, "maedet-export")
    assert f"the weights in {folder} does not fit model {str(folder)!r}: " in line
    assert re.search(r": \d+ missing keys \(conv1\.weight, .*\), \d+ unexpected keys \(st(em|ages)\.", line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18"]


# ------------------------------------------------------------------------------- hf-hub, with no network
def _run_offline(
    args: list[str], hf_home: Path, cwd: Path, offline: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process, with the hub client offline (its settings are read at import)."""
    env = {
        **os.environ,
        **(offline or {"HF_HUB_OFFLINE": "1"}),
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "maedet.export.cli", *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no connection"])
def test_an_unreachable_hub_is_one_full_sentence(tmp_path, how) -> None:
    """Issue 17: offline (HF_HUB_OFFLINE, or a hub that does not accept a connection) is found out at once, not
    after the client's retries, and said in one whole sentence (the client's own message ended mid-word)."""
    offline = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"} if how == "no connection" else None
    args = ["hf-hub:maedet-tests/no-such-repo", "--onnx", "o.onnx"]
    result = _run_offline(args, tmp_path / "hf", tmp_path, offline)
    assert result.returncode == 2
    line = _one_sentence(result.stderr, "maedet-export")
    reason = "HF_HUB_OFFLINE is set" if offline is None else "127.0.0.1 did not accept a connection: connection refused"
    assert line == (
        "maedet-export: error: hf-hub:maedet-tests/no-such-repo is not in the local Hugging Face cache and the hub "
        f"cannot be reached ({reason}); download the repo where there is network and give its folder."
    )
    assert not (tmp_path / "o.onnx").exists()


def test_a_hub_repo_loads_from_the_local_hub_cache(workdir, tmp_path) -> None:
    """hf-hub:ORG/REPO resolved by the hub client from its own cache layout (a snapshot of the converted folder)."""
    repo = tmp_path / "hf" / "hub" / "models--maedet-tests--maedet-s"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(workdir / "weights/s", repo / "snapshots" / commit)
    out = tmp_path / "hub.onnx"
    args = ["hf-hub:maedet-tests/maedet-s", "--onnx", str(out), "--input-size", *map(str, SIZE), "--no-check"]
    result = _run_offline(args, tmp_path / "hf", tmp_path)
    assert result.returncode == 0, result.stderr
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    _assert_same(_features(out, x), _timm_features(workdir / "weights/s", x))
