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
