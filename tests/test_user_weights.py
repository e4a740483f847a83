"""The user's own weights (issue 17.2-17.5): read by our checkpoint reader on every path, never a download, never
silently wrong (empty, non-finite, of the wrong kind, with foreign keys), and a trained classifier is kept."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from maedet.errors import MaeDetError
from maedet.export import resolve_model
from maedet.zoo import CheckpointError, load_checkpoint


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt at a download ends in an error that names it (the machine is offline anyway)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def classifier_state() -> dict[str, torch.Tensor]:
    """A MAE-DET-S classifier's weights, trained as far as a test can tell (a seeded, non-default classifier)."""
    torch.manual_seed(0)
    model = timm.create_model("maedet_s", num_classes=1000)
    torch.nn.init.normal_(model.head.fc.weight, std=1.0)
    return {key: value.clone() for key, value in model.state_dict().items()}


# ------------------------------------------------------------------------------------------- 17.2 empty files
def _empty_files(folder: Path) -> list[Path]:
    files = []
    for name, content in (("epoch", {"epoch": 3}), ("empty", {}), ("empty_sd", {"state_dict": {}})):
        torch.save(content, folder / f"{name}.pth")
        files.append(folder / f"{name}.pth")
    save_file({}, str(folder / "empty.safetensors"))
    return [*files, folder / "empty.safetensors"]


def test_a_checkpoint_without_tensors_is_refused_by_the_reader(tmp_path: Path) -> None:
    for path in _empty_files(tmp_path):
        with pytest.raises(CheckpointError, match="holds no tensors"):
            load_checkpoint(path)


def test_an_empty_checkpoint_never_leads_to_a_download(tmp_path: Path) -> None:
    for path in _empty_files(tmp_path):
        with pytest.raises(MaeDetError, match="holds no tensors"):
            resolve_model("maedet_s", checkpoint=path)
        with pytest.raises(MaeDetError, match="holds no tensors"):
            timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(MaeDetError, match="holds no tensors"):
        timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=dict(state_dict={}))


def test_a_checkpoint_whose_weights_are_empty_never_leads_to_a_download(tmp_path: Path) -> None:
    """Tensors elsewhere in the file, none where the weights go: refused, not a fall-back to timm's url."""
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {}, "step": torch.tensor(3)}, path)
    with pytest.raises(MaeDetError, match="none of the model's tensors"):
        resolve_model("resnet18", checkpoint=path)


# ------------------------------------------------------------------------------------------- 17.4 silent wrong results
def test_non_finite_weights_are_refused_naming_the_first(tmp_path: Path, classifier_state) -> None:
    state = dict(classifier_state)
    first = "stages.1.blocks.0.conv2.conv.weight"
    state[first] = state[first].clone()
    state[first][0, 0, 0, 0] = float("nan")
    state["stages.2.blocks.0.conv1.bn.running_var"] = torch.full_like(
        state["stages.2.blocks.0.conv1.bn.running_var"], float("inf")
    )
    for path, save in ((tmp_path / "nan.pth", torch.save), (tmp_path / "nan.safetensors", None)):
        if save is None:
            save_file(state, str(path))
        else:
            save({"state_dict": state}, path)
        with pytest.raises(CheckpointError, match=r"NaN or infinite values in tensor .*stages\.1\.blocks\.0\.conv2"):
            load_checkpoint(path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_of_the_wrong_kind_are_refused_on_export(tmp_path: Path, classifier_state, dtype) -> None:
    state = {k: v for k, v in classifier_state.items() if not k.startswith("head.")}
    key = "stages.0.blocks.0.conv1.conv.weight"
    state[key] = state[key].to(dtype)
    path = tmp_path / "kind.pth"
    torch.save(state, path)
    with pytest.raises(MaeDetError, match=f"{key} has dtype {dtype}"):
        resolve_model("maedet_s", checkpoint=path)


@pytest.mark.slow
def test_integer_weights_of_another_timm_model_are_refused_on_export(tmp_path: Path) -> None:
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state["conv1.weight"] = state["conv1.weight"].to(torch.int64)
    path = tmp_path / "kind.pth"
    torch.save(state, path)
    with pytest.raises(MaeDetError, match=r"conv1\.weight has dtype torch\.int64"):
        resolve_model("resnet18", checkpoint=path)


@pytest.mark.slow
def test_extra_keys_are_named_on_export_and_convert(tmp_path: Path, classifier_state) -> None:
    from maedet.zoo.convert import convert_checkpoint

    state = {**classifier_state, "ema.decay": torch.tensor(0.999), "extra.weight": torch.zeros(3)}
    path = tmp_path / "extra.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(MaeDetError, match=r"2 keys that are no part .*ema\.decay, extra\.weight"):
        resolve_model("maedet_s", checkpoint=path)
    with pytest.raises(MaeDetError, match=r"ema\.decay, extra\.weight"):
        convert_checkpoint(path, tmp_path / "out", "maedet_s")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
# ------------------------------------------------------------------------------------------- 17.5 numpy meta, timm path
def test_numpy_meta_loads_through_timms_overlay_and_a_payload_does_not(
    tmp_path: Path, classifier_state, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = {"epoch": np.int64(24), "lr": np.float64(0.02), "dtype": np.dtype("float32")}
    path = tmp_path / "latest.pth"
    torch.save({"meta": meta, "state_dict": classifier_state}, path)
    model = timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.head.fc.weight, classifier_state["head.fc.weight"])

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": Payload()}, "state_dict": classifier_state}, evil)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(evil)))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
# ------------------------------------------------------------------------------------------- the classifier is kept
def test_a_trained_classifier_is_kept_or_refused_never_replaced(tmp_path: Path, classifier_state) -> None:
    path = tmp_path / "cls.pth"
    torch.save(classifier_state, path)
    overlay = dict(file=str(path))
    for asked in ({}, {"num_classes": 1000}):
        model = timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=overlay, **asked)
        assert model.num_classes == 1000
        assert torch.equal(model.head.fc.weight, classifier_state["head.fc.weight"])
    assert (
        timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0).num_classes == 0
    )
    with pytest.raises(MaeDetError, match="1000-class classifier, but num_classes=10"):
        timm.create_model("maedet_s", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10)


# ------------------------------------------------------------------------------------------- 17.3 folder model_args
def _folder(tmp_path: Path, classifier_state, model_args: dict) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(
        {k: v for k, v in classifier_state.items() if not k.startswith("head.")}, str(folder / "model.safetensors")
    )
    config = {"architecture": "maedet_s", "num_classes": 0, "pretrained_cfg": {}, "model_args": model_args}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("model_args", "expect"),
    [
        ({"checkpoint_path": "/etc/passwd"}, "'checkpoint_path'"),
        ({"pretrained_cfg": {"file": "/etc/passwd"}}, "'pretrained_cfg'"),
        ({"num_classes": "1000"}, "num_classes"),
        ({"in_chans": 10**9}, "in_chans"),
        ({"drop_rate": float("nan")}, "drop_rate"),
    ],
)
def test_a_folders_model_args_are_checked(tmp_path: Path, classifier_state, model_args: dict, expect: str) -> None:
    folder = _folder(tmp_path, classifier_state, model_args)
    with pytest.raises(MaeDetError, match=expect):
        resolve_model(str(folder))
    if "pretrained_cfg" not in model_args:  # timm itself stops at that one (it is its own argument too)
        with pytest.raises(MaeDetError, match=expect):
            timm.create_model(f"local-dir:{folder}", pretrained=True)


@pytest.mark.slow
def test_a_folder_with_known_model_args_still_loads(tmp_path: Path, classifier_state) -> None:
    folder = _folder(tmp_path, classifier_state, {"drop_rate": 0.1, "global_pool": "avg"})
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    key = "stages.0.blocks.0.conv1.conv.weight"
    assert torch.equal(model.state_dict()[key], classifier_state[key])


@pytest.mark.slow
# ------------------------------------------------------------------------------------------- maedet-convert
def test_convert_keeps_the_classifier_and_records_the_users_source(tmp_path: Path, classifier_state) -> None:
    from maedet.zoo.convert import main

    path = tmp_path / "my_run.pth"
    torch.save({"state_dict": classifier_state}, path)
    out = tmp_path / "folder"
    assert main([str(path), "--model", "maedet_s", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 1000
    cfg = config["pretrained_cfg"]
    assert "tag" not in cfg and "origin_url" not in cfg and "url" not in cfg and "paper_ids" not in cfg
    assert cfg["notes"] == ["Converted by maedet-convert from my_run.pth."]
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(model.head.fc.weight, classifier_state["head.fc.weight"])


def test_a_converted_detector_card_claims_no_dataset(tmp_path: Path) -> None:
    from maedet.zoo import create_detector
    from maedet.zoo.detector_folder import detector_config, model_card

    card = model_card(detector_config(create_detector("maedet_s_gfl")), "mine.pth")
    assert "datasets" not in card and "coco" not in card.split("---")[1] and "`mine.pth`" in card
