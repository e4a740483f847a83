"""MaeDet as a timm model: the timm interface, features, the deploy form, and torch's export paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch

import maedet
from maedet.zoo import MaeDet, Stage, Stem, Structure, builtin_structure, fuse_bn

SMALL = Structure(
    Stem(3, 16, 2, 3),
    (
        Stage(16, 24, 2, 5, 2, 16),
        Stage(24, 48, 2, 3, 2, 16),
        Stage(48, 64, 2, 3, 1, 24),
        Stage(64, 64, 1, 3, 1, 24),
        Stage(64, 96, 2, 5, 2, 32),
    ),
)
SMALL_IN = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial statistics so that folding has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def test_registered_with_timm() -> None:
    names = timm.list_models("maedet*")
    assert {"maedet", "maedet_s", "maedet_m", "maedet_l"} <= set(names)
    tags = timm.list_pretrained("maedet*")
    assert {"maedet_s.gflv2_coco", "maedet_m.gflv2_coco", "maedet_l.gflv2_coco"} <= set(tags)
    cfg = timm.get_pretrained_cfg("maedet_m.gflv2_coco")
    assert cfg.url.endswith("/LightNAS/detection/maedet-m/latest.pth")
    assert cfg.first_conv == "stem.conv" and cfg.classifier == "head.fc"
    assert cfg.input_size == (3, 640, 640)
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model("maedet_s"))
    assert data_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and data_cfg["crop_pct"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "channels"),
    [("maedet_s", [48, 272, 1024, 2048]), ("maedet_m", [120, 512, 1632, 2048]), ("maedet_l", [144, 608, 1912, 2400])],
)
def test_features_only_c2_to_c5(name: str, channels: list[int]) -> None:
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // r, 64 // r) for c, r in zip(channels, [4, 8, 16, 32], strict=True)
    ]
    picked = timm.create_model(name, features_only=True, out_indices=(2, 3))
    assert picked.feature_info.channels() == channels[2:]


@pytest.mark.slow
def test_classification_interface() -> None:
    model = timm.create_model("maedet", structure=SMALL, num_classes=10, drop_rate=0.1).eval()
    assert isinstance(model, MaeDet) and model.num_features == 96
    with torch.no_grad():
        features = model.forward_features(SMALL_IN)
        assert features.shape == (2, 96, 2, 3)
        assert model.forward_head(features, pre_logits=True).shape == (2, 96)
        assert model(SMALL_IN).shape == (2, 10)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(5)
    assert model(SMALL_IN).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0, global_pool="")
    assert model(SMALL_IN).shape == (2, 96, 2, 3)
    backbone = timm.create_model("maedet_s")
    assert backbone.num_classes == 0 and backbone(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
    gray = timm.create_model("maedet", structure=SMALL, in_chans=1, num_classes=3).eval()
    assert gray.stem.conv.in_channels == 1 and gray(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert model.group_matcher()["blocks"].startswith("^stages")


@pytest.mark.slow
def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = timm.create_model("maedet", structure=SMALL, num_classes=4)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in checkpointed.stages)
    for model in (plain, checkpointed):
        model(SMALL_IN).square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def test_structure_sources(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    SMALL.save(path)
    txt = tmp_path / "best_structure.txt"
    SMALL.save(txt)
    models = [
        timm.create_model("maedet", structure=source, features_only=True)
        for source in (SMALL, SMALL.to_dict(), SMALL.to_authors(), str(path), path, str(txt))
    ]
    assert all(m.feature_info.channels() == [24, 48, 64, 96] for m in models)
    # the stride-1 stage extends C4 instead of starting a new level
    assert models[0].feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="needs structure"):
        timm.create_model("maedet")
    assert json.loads(path.read_text())["format"] == "maedet-structure/1"


@pytest.mark.slow
@pytest.mark.parametrize("features_only", [False, True])
def test_fuse_bn_matches_eval_model(features_only: bool) -> None:
    kwargs = {"features_only": True} if features_only else {"num_classes": 10}
    model = _randomize_bn(timm.create_model("maedet_s", **kwargs))
    x = torch.randn(1, 3, 96, 96)
    fused = fuse_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        ref, out = model(x), fused(x)
    for r, o in zip(ref if features_only else [ref], out if features_only else [out], strict=True):
        assert (o - r).abs().max() <= 1e-5 * r.abs().max()
    assert maedet.fuse_bn is fuse_bn


@pytest.mark.slow
def test_torch_export_trace_and_channels_last() -> None:
    model = _randomize_bn(timm.create_model("maedet", structure=SMALL, features_only=True))
    with torch.no_grad():
        ref = model(SMALL_IN)
        exported = torch.export.export(model, (SMALL_IN,))
        traced = torch.jit.trace(model, SMALL_IN)
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        cl_out = cl_model(SMALL_IN.to(memory_format=torch.channels_last))
        for outs in (exported.module()(SMALL_IN), traced(SMALL_IN), cl_out):
            for r, o in zip(ref, outs, strict=True):
                assert (o - r).abs().max() <= 1e-5 * r.abs().max()
    assert cl_out[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_torch_compile() -> None:
    model = _randomize_bn(timm.create_model("maedet", structure=SMALL, num_classes=3))
    compiled = torch.compile(model)
    with torch.no_grad():
        ref = model(SMALL_IN)
        assert (compiled(SMALL_IN) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_published_structures_are_the_builtins() -> None:
    for name in ("maedet_s", "maedet_m", "maedet_l"):
        assert timm.create_model(name).structure == builtin_structure(name)
