"""Weights load strictly for every model (issue 12.1): a checkpoint that does not fit is refused in one sentence
with counts and example keys, never exported as random weights; only classifier keys are set aside, by name."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from maedet.export import ExportError, resolve_model
from maedet.export.cli import main
from maedet.zoo import load_checkpoint
from maedet.zoo.checkpoint import unwrap_state_dict

pytestmark = pytest.mark.slow  # see make test-fast

SIZE = (64, 64)


@pytest.fixture(autouse=True)
def _plain_maedet_logger():
    """The CLIs bind the maedet logger to the stderr of their own run; give the next test a plain logger again."""
    yield
    logger = logging.getLogger("maedet")
    logger.handlers.clear()
    logger.propagate = True


@pytest.fixture(scope="module")
def r50_state() -> dict[str, torch.Tensor]:
    """A genuine ResNet-50 state dict (classifier included), as ``torch.save(model.state_dict())`` writes it."""
    torch.manual_seed(0)
    return timm.create_model("resnet50").state_dict()


@pytest.fixture(scope="module")
def r50_file(r50_state, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("r50") / "r50.pth"
    torch.save(r50_state, path)
    return str(path)


def _export(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("maedet-export: error: "), err
    return lines[0]


def _features_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[np.ndarray]:
    """ResNet-50 C2..C5 computed by timm itself from the same weights (independent of the exporter)."""
    model = timm.create_model("resnet50", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)
    with torch.no_grad():
        return [t.numpy() for t in model(x)]


def test_renamed_keys_are_refused_in_one_sentence(r50_state, tmp_path, capsys) -> None:
    renamed = tmp_path / "r50_renamed.pth"
    torch.save({f"garbage.{k}": v for k, v in r50_state.items()}, renamed)
    out = tmp_path / "out.onnx"
    code, err = _export(["resnet50", "--checkpoint", renamed, "--onnx", out], capsys)
    line = _one_sentence(err)
    assert code == 2
    # BatchNorm fills in a missing num_batches_tracked itself (torch's rule for old checkpoints): those don't count
    n_missing = sum(not k.startswith("fc.") and not k.endswith("num_batches_tracked") for k in r50_state)
    assert f"checkpoint r50_renamed.pth does not fit model 'resnet50': {n_missing} missing keys (conv1.weight" in line
    assert f"{len(r50_state)} unexpected keys (garbage." in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r50_renamed.pth"]


def test_a_maedet_checkpoint_into_resnet50_is_refused(authors_checkpoint_file, tmp_path, capsys) -> None:
    out = tmp_path / "out.onnx"
    code, err = _export(["resnet50", "--checkpoint", authors_checkpoint_file("s"), "--onnx", out], capsys)
    line = _one_sentence(err)
    assert code == 2
    assert "checkpoint latest.pth does not fit model 'resnet50': " in line
    assert " missing keys (conv1.weight, " in line and " unexpected keys (body.block_list.0." in line
    assert not out.exists()


def test_a_misshapen_tensor_is_named(r50_state, tmp_path, capsys) -> None:
    wrong = dict(r50_state)
    wrong["layer1.0.conv1.weight"] = torch.zeros(32, 64, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    code, err = _export(["resnet50", "--checkpoint", tmp_path / "wrong.pth", "--onnx", tmp_path / "o.onnx"], capsys)
    assert code == 2
    assert _one_sentence(err).endswith(
        "checkpoint wrong.pth does not fit model 'resnet50': 1 misshapen key (layer1.0.conv1.weight (32, 64, 1, 1) "
        "vs model (64, 64, 1, 1))."
    )


def test_a_genuine_resnet50_exports_its_own_weights_and_names_the_skipped_classifier(
    r50_state, r50_file, tmp_path, capsys
) -> None:
    out = tmp_path / "r50.onnx"
    argv = ["resnet50", "--checkpoint", r50_file, "--onnx", out, "--input-size", *SIZE]
    code, err = _export(argv, capsys)
    assert code == 0, err
    assert "maedet-export: checkpoint r50.pth: skipped 2 classifier keys (fc.bias, fc.weight)" in err
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    for g, want in zip(got, _features_reference(r50_state, x), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-4)


def test_logits_load_the_classifier_strictly(r50_state, r50_file, tmp_path) -> None:
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    source = resolve_model("resnet50", checkpoint=r50_file, outputs="logits")
    reference = timm.create_model("resnet50").eval()
    reference.load_state_dict(r50_state)
    with torch.no_grad():
        torch.testing.assert_close(source.module(x)[0], reference(x), rtol=1e-4, atol=1e-4)
    headless = tmp_path / "no_fc.pth"
    torch.save({k: v for k, v in r50_state.items() if not k.startswith("fc.")}, headless)
    with pytest.raises(ExportError, match=r"2 missing keys \(fc\.weight, fc\.bias\)"):
        resolve_model("resnet50", checkpoint=headless, outputs="logits")
    with pytest.raises(ExportError, match=r"2 misshapen keys \(fc\.weight \(1000, 2048\) vs model \(10, 2048\)"):
        resolve_model("resnet50", checkpoint=r50_file, outputs="logits", num_classes=10)


def test_training_wrappers_are_unwrapped_and_detector_parts_named(r50_state, tmp_path, caplog) -> None:
    """mmdetection's layout (state_dict → backbone.*, plus neck and head) and DDP's module. prefix load."""
    wrapped = {f"module.backbone.{k}": v for k, v in r50_state.items() if not k.startswith("fc.")}
    wrapped["module.neck.lateral.weight"] = torch.zeros(4)
    torch.save({"meta": {"epoch": 3}, "state_dict": wrapped}, tmp_path / "det.pth")
    with caplog.at_level(logging.INFO, logger="maedet"):
        source = resolve_model("resnet50", checkpoint=tmp_path / "det.pth")
    assert "checkpoint det.pth: left out 1 keys outside the backbone (neck)" in caplog.text
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        got = source.module(x)
    for g, want in zip(got, _features_reference(r50_state, x), strict=True):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-3, atol=1e-4)


def test_unwrap_keeps_plain_state_dicts_as_they_are(r50_state) -> None:
    tensors, left_out = unwrap_state_dict(r50_state)
    assert tensors.keys() == r50_state.keys() and left_out == []


def test_a_maedet_checkpoint_still_loads_into_its_model(authors_checkpoint_file) -> None:
    """The authors' mmdetection file (backbone + neck + head) into maedet_s: the MAE-DET mapping still applies."""
    source = resolve_model("maedet_s", checkpoint=authors_checkpoint_file("s"))
    assert source.output_names == ("c2", "c3", "c4", "c5")
    state = load_checkpoint(authors_checkpoint_file("s"))["state_dict"]
    stem = source.module.inner.stem.conv.weight  # BN folded: scale the raw conv by the BN factor to compare
    prefix = "backbone.body.block_list.0."
    scale = (state[f"{prefix}bn1.weight"] / torch.sqrt(state[f"{prefix}bn1.running_var"] + 1e-5)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(stem, state[f"{prefix}conv1.weight"] * scale)


def test_a_resnet_checkpoint_into_maedet_is_refused(r50_file) -> None:
    with pytest.raises(ExportError, match=r"checkpoint r50\.pth does not fit model 'maedet_s'"):
        resolve_model("maedet_s", checkpoint=r50_file)
