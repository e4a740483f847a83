"""The authors' checkpoints: exact loading through timm (file, url, local-dir, hf-hub) and the converter."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from maedet.zoo import CheckpointError, checkpoint_filter_fn, load_checkpoint
from maedet.zoo.convert import convert_checkpoint, main

AssertLoaded = Callable[[torch.nn.Module, str], None]


@pytest.fixture(scope="module")
def assert_loaded(authors_state_dict) -> AssertLoaded:
    """Check that a model holds the authors' tensors, mapped to our names independently of the filter (by order)."""

    def check(model: torch.nn.Module, size: str) -> None:
        theirs = list(authors_state_dict(size).values())
        ours = list(timm.create_model(f"maedet_{size}").state_dict().keys())
        assert len(theirs) == len(ours)
        state = model.state_dict()
        for key, tensor in zip(ours, theirs, strict=True):
            assert torch.equal(state[key], tensor), key

    return check


@pytest.mark.slow
@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_pretrained_from_authors_file(size: str, authors_checkpoint_file, assert_loaded: AssertLoaded) -> None:
    path = authors_checkpoint_file(size)
    model = timm.create_model(f"maedet_{size}.gflv2_coco", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert_loaded(model, size)
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


@pytest.mark.slow
def test_pretrained_from_url(
    http_server, tmp_path_factory: pytest.TempPathFactory, authors_checkpoint, assert_loaded: AssertLoaded
) -> None:
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
    assert_loaded(model, "m")
    assert (cache / "maedet_m-gflv2_coco-latest.pth").is_file()  # its own name: the authors call all three latest.pth


@pytest.mark.slow
def test_filter_accepts_tinynas_and_our_layouts(authors_state_dict) -> None:
    model = timm.create_model("maedet_s")
    bare = {k.removeprefix("backbone.body."): v for k, v in authors_state_dict("s").items()}
    ours = checkpoint_filter_fn(bare, model)
    assert ours.keys() == model.state_dict().keys()
    again = checkpoint_filter_fn({"state_dict": ours}, model)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


@pytest.mark.slow
def test_filter_names_missing_unexpected_and_misshapen_keys(authors_state_dict) -> None:
    model = timm.create_model("maedet_s")
    state = authors_state_dict("s")
    missing = dict(state)
    del missing["backbone.body.block_list.3.block_list.9.conv2.conv1.weight"]
    with pytest.raises(ValueError, match=r"backbone: 1 missing key \(stages\.2\.blocks\.9\.conv2\.conv\.weight\)"):
        checkpoint_filter_fn(missing, model)
    extra = dict(state)
    extra["backbone.body.block_list.4.block_list.10.conv1.conv1.weight"] = torch.zeros(240, 2048, 1, 1)
    with pytest.raises(ValueError, match=r"1 unexpected key \(stages\.3\.blocks\.10\.conv1\.conv\.weight"):
        checkpoint_filter_fn(extra, model)
    with pytest.raises(ValueError, match=r"backbone: \d+ missing keys"):
        checkpoint_filter_fn(authors_state_dict("s"), timm.create_model("maedet_m"))
    bent = dict(state)
    bent["backbone.body.block_list.2.block_list.0.conv2.conv1.weight"] = torch.zeros(120, 120, 5, 5)
    with pytest.raises(ValueError, match=r"1 misshapen key \(stages\.1\.blocks\.0\.conv2\.conv\.weight"):
        checkpoint_filter_fn(bent, model)
    odd = dict(state)
    odd["backbone.body.block_list.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="is not part of a MAE-DET backbone"):
        checkpoint_filter_fn(odd, model)


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


@pytest.mark.slow
def test_unsafe_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], authors_state_dict) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": authors_state_dict("s"), "meta": NotATensor()}, path)
    refusal = r"refused: it contains code-executing objects \(test_zoo_weights\.NotATensor\)"
    with pytest.raises(CheckpointError, match=refusal):
        load_checkpoint(path)
    assert main([str(path), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maedet-convert: error: checkpoint evil.pth was refused") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main([str(garbage), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "garbage.pth was refused" in err and "Unsupported operand" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


class RunsCode:
    """A pickle that would run a shell command if it were ever loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_code_executing_pickle_is_named_and_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], authors_state_dict
) -> None:
    marker = tmp_path / "ran"
    checkpoint = {"state_dict": authors_state_dict("s"), "meta": RunsCode(marker)}
    zipped, legacy = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    torch.save(checkpoint, zipped)
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)  # torch's older, non-zip format
    bare = tmp_path / "evil_bare.pth"  # a plain pickle (protocol 5: torch's unpickler stops at its FRAME opcode)
    bare.write_bytes(pickle.dumps({"state_dict": {}, "meta": RunsCode(marker)}, protocol=5))
    system = f"{os.system.__module__}.system"  # posix.system
    for path in (zipped, legacy, bare):
        with pytest.raises(CheckpointError, match=rf"contains code-executing objects \({system}\)"):
            load_checkpoint(path)
        assert main([str(path), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"maedet-convert: error: checkpoint {path.name} was refused: it contains code-executing")
        assert system in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def _as_numpy1_wrote_it(path: Path, out: Path) -> Path:
    """The same checkpoint as written under numpy 1, whose scalar constructor lived in ``numpy.core.multiarray``."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
                assert b"numpy.core.multiarray\nscalar" in data
            dst.writestr(name, data)
    return out


@pytest.mark.slow
def test_mmdetection_meta_with_numpy_scalars_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], authors_checkpoint, assert_loaded: AssertLoaded
) -> None:
    """mmdetection keeps numpy scalars and dtypes in ``meta``; they load with weights_only=True, nothing else does."""
    checkpoint = authors_checkpoint("s")
    meta = {"epoch": np.int64(24), "lr": np.float64(0.02), "best_ap": np.float32(0.451), "flags": [np.bool_(True)]}
    checkpoint["meta"].update(meta, dtype=np.dtype("float32"))
    path = tmp_path / "latest.pth"
    torch.save(checkpoint, path)
    for candidate in (path, _as_numpy1_wrote_it(path, tmp_path / "numpy1.pth")):
        loaded = load_checkpoint(candidate)
        assert loaded["meta"]["epoch"] == 24 and type(loaded["meta"]["epoch"]) is np.int64
        assert loaded["meta"]["best_ap"] == np.float32(0.451) and loaded["meta"]["dtype"] == np.dtype("float32")
        assert loaded["meta"]["flags"] == [np.True_]
        assert loaded["state_dict"].keys() == checkpoint["state_dict"].keys()
    out = tmp_path / "converted"
    assert main([str(tmp_path / "numpy1.pth"), "--model", "maedet_s", "--out", str(out)]) == 0
    assert_loaded(timm.create_model(f"local-dir:{out}", pretrained=True), "s")


@pytest.mark.slow
def test_converted_folder_gets_the_umask_permissions(authors_checkpoint_file, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        out = convert_checkpoint(authors_checkpoint_file("s"), tmp_path / "weights", "maedet_s")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_convert_cli_version_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import maedet

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"maedet-convert {maedet.__version__}"
    missing = tmp_path / "missing.pth"
    assert main([str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"maedet-convert: error: checkpoint {str(missing)!r} does not exist or is not a file.\n"
    assert main(["--model", "maedet_s"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maedet-convert: error: the following arguments are required") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_convert_then_local_dir(
    authors_checkpoint_file, tmp_path: Path, capsys: pytest.CaptureFixture[str], assert_loaded: AssertLoaded
) -> None:
    out = tmp_path / "maedet_s_coco"
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(out)]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maedet_s_coco"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "maedet_s" and config["pretrained_cfg"]["first_conv"] == "stem.conv"
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert_loaded(model, "s")
    features = timm.create_model(f"local-dir:{out}", pretrained=True, features_only=True)
    assert features.feature_info.channels() == [48, 272, 1024, 2048]
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_convert_searched_structure(authors_checkpoint_file, tmp_path: Path, assert_loaded: AssertLoaded) -> None:
    """A structure file (the authors' txt) becomes a self-describing folder for the generic 'maedet' entry."""
    structure_file = tmp_path / "best_structure.txt"
    structure_file.write_text(timm.create_model("maedet_l").structure.to_authors_text())
    out = convert_checkpoint(authors_checkpoint_file("l"), tmp_path / "searched", "maedet", structure_file)
    assert json.loads((out / "config.json").read_text())["model_args"]["structure"]["blocks"][4]["out"] == 2400
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.pretrained_cfg["architecture"] == "maedet"
    assert_loaded(model, "l")


@pytest.mark.slow
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
        "import maedet.zoo, timm, torch, sys\n"
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


# ------------------------------------------------------------------------ refusals that must not crash (issue 17)
def test_a_protocol_0_pickle_inside_torch_zip_is_refused_in_one_sentence(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "good.pth")
    for name, payload in (("plain", {"x": 1}), ("evil", {"x": Payload()})):
        path = tmp_path / f"{name}.pth"
        with zipfile.ZipFile(tmp_path / "good.pth") as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                dst.writestr(info, pickle.dumps(payload, protocol=0) if info.filename.endswith("data.pkl") else data)
        with pytest.raises(CheckpointError, match="was refused") as info:
            load_checkpoint(path)
        if name == "evil":
            assert "posix.system" in str(info.value)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize("protocol", [1, 2])
def test_every_truncation_of_a_bare_pickle_is_one_sentence(protocol: int, tmp_path: Path) -> None:
    raw = pickle.dumps({"a": 123456789, "b": "x" * 300, "c": [1.5, 70000, "yy"]}, protocol=protocol)
    path = tmp_path / "cut.pth"
    for length in range(1, len(raw)):
        path.write_bytes(raw[:length])
        with pytest.raises(CheckpointError):  # not struct.error or IndexError from the unpickler
            load_checkpoint(path)


def test_features_only_out_indices_beyond_the_levels_are_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"maedet_s has 4 feature levels: indices 0\.\.3") as info:
        timm.create_model("maedet_s", features_only=True, out_indices=(0, 4))
    assert "(4)" in str(info.value)
    model = timm.create_model("maedet_s", features_only=True, out_indices=(0, -1))
    assert len(model.feature_info.channels()) == 2


@pytest.mark.slow
def test_a_ddp_classifier_checkpoint_loads_through_timm(tmp_path: Path) -> None:
    """A classifier trained under DDP (``module.`` keys, in a ``state_dict``): the model keeps its classifier and its
    class count; asked for no classifier (num_classes=0), it leaves it out and says so in a warning."""
    import logging

    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    trained = timm.create_model("maedet_s", num_classes=10)
    state = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "ddp.pth")
    overlay = {"file": str(tmp_path / "ddp.pth")}
    classifier = timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=overlay)
    assert classifier.num_classes == 10
    assert torch.equal(classifier.state_dict()["head.fc.weight"], trained.state_dict()["head.fc.weight"])
    logger = logging.getLogger("maedet.zoo")  # the CLI runner may have stopped propagation at 'maedet'
    logger.addHandler(handler)
    try:
        backbone = timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0)
    finally:
        logger.removeHandler(handler)
    assert torch.equal(backbone.state_dict()["stem.conv.weight"], trained.state_dict()["stem.conv.weight"])
    assert backbone.num_classes == 0
    assert any("10-class classifier" in r.getMessage() for r in seen)
    full = checkpoint_filter_fn(torch.load(tmp_path / "ddp.pth", weights_only=True), trained)
    assert torch.equal(full["head.fc.weight"], trained.state_dict()["head.fc.weight"])


def test_a_missing_overlay_file_is_named(tmp_path) -> None:
    """Issue 17: timm's own FileNotFoundError for a missing pretrained_cfg_overlay file has an empty message."""
    missing = tmp_path / "latest.pth"
    with pytest.raises(ValueError, match=f"checkpoint {str(missing)!r} does not exist"):
        timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))


def test_a_zip_declaring_far_more_than_it_holds_is_not_read(tmp_path: Path) -> None:
    """Issue 17: torch reads every zip entry whole, deflated or not; a 66 kB file may declare 64 MiB (or 8 GB)."""
    torch.save({"w": torch.zeros(4)}, tmp_path / "small.pth")
    with zipfile.ZipFile(tmp_path / "small.pth") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(tmp_path / "bomb.pth", "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
        out.writestr("small/data/1", bytes(64 * 2**20), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    assert (tmp_path / "bomb.pth").stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"declares 64 MiB of data in a file of 0\.\d MiB; torch.save never"):
        load_checkpoint(tmp_path / "bomb.pth")
    assert load_checkpoint(tmp_path / "small.pth")["w"].shape == (4,)  # torch's own files stay readable


def test_a_zip_declaring_more_than_memory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maedet import memory

    torch.save({"w": torch.zeros(2**16)}, tmp_path / "w.pth")  # 256 kB of tensor data, stored uncompressed
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 2**16)  # a machine with 64 kB to spare
    with pytest.raises(CheckpointError, match=r"reading checkpoint w\.pth needs about"):
        load_checkpoint(tmp_path / "w.pth")
