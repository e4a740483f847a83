"""The zoo under the inputs a new user gives it: any image size, fp16 at init, caches, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from maedet.zoo import Stage, Stem, Structure, gmacs

TINY = Structure(
    Stem(3, 8, 2, 3),
    (
        Stage(8, 16, 2, 3, 2, 8),
        Stage(16, 24, 2, 5, 1, 8),
        Stage(24, 32, 2, 3, 2, 16),
        Stage(32, 32, 2, 3, 1, 16),
    ),
)
ODD_SIZES = [(300, 300), (225, 225), (330, 330), (333, 333), (333, 517)]


@pytest.mark.parametrize(("height", "width"), ODD_SIZES)
def test_any_input_size_runs_like_a_strided_conv(height: int, width: int) -> None:
    model = timm.create_model("maedet", structure=TINY, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, height, width))
    for feat, reduction in zip(feats, model.feature_info.reduction(), strict=True):
        assert feat.shape[-2:] == (-(-height // reduction), -(-width // reduction))


def test_maedet_s_at_300() -> None:
    model = timm.create_model("maedet_s", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 300, 300)).shape == (1, 2048)


def test_gmacs_at_odd_size_equal_flop_counter() -> None:
    model = timm.create_model("maedet", structure=TINY, num_classes=0).eval()
    for height, width in ODD_SIZES:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, height, width))
        assert counter.get_total_flops() == 2 * round(gmacs(TINY, height, width) * 1e9)


def test_dynamic_onnx_runs_at_333x517(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from maedet.export import export_onnx

    model = timm.create_model("maedet", structure=TINY, features_only=True).eval()
    path = tmp_path / "tiny.onnx"
    export_onnx(model, path, input_size=(320, 320), dynamic=True)
    x = torch.randn(1, 3, 333, 517, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["maedet_s", "maedet_m", "maedet_l"])
def test_fresh_model_fits_fp16(name: str) -> None:
    model = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        c5 = model(torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0)))[-1]
    assert c5.abs().max().item() < torch.finfo(torch.float16).max


def test_zero_init_last_is_an_option() -> None:
    zeroed = timm.create_model("maedet", structure=TINY)
    kept = timm.create_model("maedet", structure=TINY, zero_init_last=False)
    last_bns = [block.conv3.bn.weight for stage in zeroed.stages for block in stage.blocks]
    assert all(torch.count_nonzero(w) == 0 for w in last_bns)
    assert all(torch.all(block.conv3.bn.weight == 1) for stage in kept.stages for block in stage.blocks)
