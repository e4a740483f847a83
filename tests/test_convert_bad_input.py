"""``maedet-convert`` against hostile and careless input (first probed in issue 12): every case one sentence
with exit 2 and no folder written; an interrupted or killed conversion leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from maedet.zoo import CheckpointError, checkpoint_filter_fn, load_checkpoint
from maedet.zoo.convert import main

STEM = "backbone.body.block_list.0.conv1.weight"  # the authors' name of the stem conv (32, 3, 3, 3) in MAE-DET-S


def _refused(capsys, checkpoint: Path, out: Path, *extra: str) -> str:
    assert main([str(checkpoint), "--model", "maedet_s", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maedet-convert: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


@pytest.mark.slow
def test_wrong_stem_shape_is_named(tmp_path, capsys, authors_checkpoint):
    checkpoint = authors_checkpoint("s")
    checkpoint["state_dict"][STEM] = torch.zeros(32, 3, 5, 5)
    torch.save(checkpoint, tmp_path / "stem.pth")
    err = _refused(capsys, tmp_path / "stem.pth", tmp_path / "out")
    assert "shape mismatch in stem.conv.weight (32, 3, 5, 5) vs model (32, 3, 3, 3)" in err


def test_non_text_keys_are_refused(tmp_path, capsys, authors_checkpoint):
    checkpoint = authors_checkpoint("s")
    checkpoint["state_dict"][7] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "int_keys.pth")
    err = _refused(capsys, tmp_path / "int_keys.pth", tmp_path / "out")
    assert "int_keys.pth has a tensor under the key 7 (of type int) in 'state_dict'; keys must be text" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "make", "named"),
    [
        ("meta", lambda t: torch.empty(t.shape, device="meta"), "a meta tensor (shape only, no data)"),
        ("sparse", lambda t: t.to_sparse(), "a torch.sparse_coo tensor"),
    ],
)
def test_tensors_without_dense_data_are_refused(kind, make, named, tmp_path, capsys, authors_checkpoint):
    checkpoint = authors_checkpoint("s")
    checkpoint["state_dict"][STEM] = make(checkpoint["state_dict"][STEM])
    path = tmp_path / f"{kind}.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=re.escape(f"holds {named} at 'state_dict.{STEM}'")):
        load_checkpoint(path)
    assert named in _refused(capsys, path, tmp_path / "out")


@pytest.fixture(scope="module")
def ours_s(authors_state_dict) -> dict[str, torch.Tensor]:
    """MAE-DET-S weights under our names, as a converted folder's model.safetensors holds them."""
    return checkpoint_filter_fn(authors_state_dict("s"), timm.create_model("maedet_s"))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.complex64])
def test_safetensors_of_the_wrong_kind_are_refused(dtype, ours_s, tmp_path, capsys):
    key = "stages.0.blocks.0.conv1.conv.weight"
    state = dict(ours_s)
    state[key] = state[key].to(dtype)
    save_file(state, tmp_path / "model.safetensors")
    err = _refused(capsys, tmp_path / "model.safetensors", tmp_path / "out")
    assert f"checkpoint tensor {key} has dtype {dtype}, but the model's is torch.float32" in err


@pytest.mark.slow
def test_float_safetensors_convert(ours_s, tmp_path):
    """The refusals above are about the kind of number: a float16 copy of the same weights converts."""
    save_file({k: v.half() if v.is_floating_point() else v for k, v in ours_s.items()}, tmp_path / "h.safetensors")
    assert main([str(tmp_path / "h.safetensors"), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    key = "stages.2.blocks.0.conv2.conv.weight"
    assert torch.equal(model.state_dict()[key], ours_s[key].half().float())


def test_a_named_model_and_a_structure_conflict(tmp_path, capsys, authors_checkpoint_file):
    structure = tmp_path / "s.json"
    structure.write_text(timm.create_model("maedet_s").structure.to_json())
    err = _refused(capsys, authors_checkpoint_file("s"), tmp_path / "out", "--structure", str(structure))
    assert "--model maedet_s has its own structure" in err and "--model maedet" in err


@pytest.mark.slow
def test_a_structure_alone_means_the_generic_model(tmp_path, authors_checkpoint_file):
    structure = tmp_path / "s.json"
    structure.write_text(timm.create_model("maedet_s").structure.to_json())
    out = tmp_path / "out"
    assert main([str(authors_checkpoint_file("s")), "--structure", str(structure), "--out", str(out)]) == 0
    assert timm.create_model(f"local-dir:{out}").pretrained_cfg["architecture"] == "maedet"


@pytest.mark.slow
def test_a_utf8_bom_structure_converts(tmp_path, authors_checkpoint_file):
    structure = tmp_path / "bom.json"
    structure.write_bytes(b"\xef\xbb\xbf" + timm.create_model("maedet_s").structure.to_json().encode())
    out = tmp_path / "out"
    argv = [str(authors_checkpoint_file("s")), "--model", "maedet", "--structure", str(structure), "--out", str(out)]
    assert main(argv) == 0
    assert (out / "model.safetensors").is_file()


def test_out_under_a_file_is_refused_before_any_work(tmp_path, capsys, authors_checkpoint_file):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = _refused(capsys, authors_checkpoint_file("s"), a_file / "sub")
    assert f"cannot create the output folder {str(a_file / 'sub')!r}: {str(a_file)!r} is a file" in err
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(a_file)]) == 2
    assert (
        capsys.readouterr().err
        == f"maedet-convert: error: the output folder {str(a_file)!r} exists and is not a folder.\n"
    )
    assert a_file.read_text() == "x"


def _staging(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".maedet-tmp")]


def _default_sigint() -> None:
    """A test run started in the background (``cmd &``, nohup, some CI runners) inherits SIGINT ignored, and so would
    the child: it would finish every save whatever the signal. Ctrl-C at a terminal reaches a process that has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_during_the_save_leaves_nothing(tmp_path, authors_checkpoint_file):
    """A real SIGINT to a real ``maedet-convert`` while its staging folder exists (the save is under way). A save
    that finishes before the signal lands leaves the whole folder and exits 0; the attempt is then made again, so the
    signal is tested inside the save, not the scheduler's timing."""
    parent = tmp_path / "weights"
    parent.mkdir()
    out = parent / "maedet_l"
    cmd = [sys.executable, "-m", "maedet.zoo.convert", str(authors_checkpoint_file("l")), "--model", "maedet_l"]
    for _ in range(5):
        child = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=_default_sigint)  # fmt: skip
        deadline = time.monotonic() + 300
        while not _staging(parent, out.name) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
        if child.returncode == 0:  # the save won the race: the output is whole, and nothing is left beside it
            assert sorted(p.name for p in parent.iterdir()) == [out.name] and (out / "config.json").is_file()
            shutil.rmtree(out)
            continue
        assert child.returncode == 130, err[-2000:]
        assert err == "maedet-convert: interrupted; no output file was left half-written.\n"
        assert list(parent.iterdir()) == []
        return
    pytest.fail("five saves in a row finished before SIGINT arrived")


@pytest.mark.slow
def test_a_killed_conversions_staging_folder_is_removed_by_the_next(tmp_path, authors_checkpoint_file):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".weights.{child.pid}.x7q2k9.maedet-tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    assert main([str(authors_checkpoint_file("s")), "--model", "maedet_s", "--out", str(tmp_path / "weights")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]
    assert os.path.exists(tmp_path / "weights" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["backbone.body.", "backbone.", "body.", "module."])
def test_every_prefix_the_readme_lists_is_accepted(prefix, tmp_path, capsys):
    """Issue 17: our own (timm) keys under any of the listed prefixes convert to the same folder as bare keys."""
    model = timm.create_model("maedet_s", num_classes=0)
    torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    assert main([str(tmp_path / "w.pth"), "--model", "maedet_s", "--out", str(tmp_path / "out")]) == 0, (
        capsys.readouterr().err
    )
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True, num_classes=0)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_control_characters_in_keys_are_escaped_in_the_message(tmp_path, capsys):
    """Issue 17: a NUL (or a terminal escape) in a checkpoint key is shown as \\x00, never written raw."""
    state = timm.create_model("maedet_s", num_classes=0).state_dict()
    state["stem.conv.weight\x00\x1b[2J"] = state.pop("stem.conv.weight")
    torch.save(state, tmp_path / "nul.pth")
    err = _refused(capsys, tmp_path / "nul.pth", tmp_path / "out")
    assert "\x00" not in err and "\x1b" not in err and "stem.conv.weight\\x00\\x1b[2J" in err
