"""The zoo under the inputs a new user gives it: any image size, fp16 at init, caches, no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from maedet.errors import MaeDetError
from maedet.zoo import Stage, Stem, Structure, checkpoint_filter_fn, gmacs
from maedet.zoo.structure import StructureError, load_structure

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


@pytest.mark.slow
def test_maedet_s_at_300() -> None:
    model = timm.create_model("maedet_s", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 300, 300)).shape == (1, 2048)


@pytest.mark.slow
def test_gmacs_at_odd_size_equal_flop_counter() -> None:
    model = timm.create_model("maedet", structure=TINY, num_classes=0).eval()
    for height, width in ODD_SIZES:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randn(1, 3, height, width))
        assert counter.get_total_flops() == 2 * round(gmacs(TINY, height, width) * 1e9)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_stochastic_depth_rises_linearly_and_is_off_in_eval() -> None:
    model = timm.create_model("maedet", structure=TINY, drop_path_rate=0.1, num_classes=0)
    rates = [
        block.drop_path.drop_prob if isinstance(block.drop_path, timm.layers.DropPath) else 0.0
        for stage in model.stages
        for block in stage.blocks
    ]
    assert rates == pytest.approx([0.1 * i / 5 for i in range(6)])
    plain = timm.create_model("maedet", structure=TINY, num_classes=0)
    plain.load_state_dict(model.state_dict())
    for m in model.modules():  # give the residual branches a say, so that dropping them shows
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    model.train(), plain.train()
    with torch.no_grad():
        torch.manual_seed(1)
        assert not torch.equal(model(x), plain(x))


def test_forward_intermediates_match_features_only() -> None:
    torch.manual_seed(0)
    model = timm.create_model("maedet", structure=TINY).eval()
    torch.manual_seed(0)
    features = timm.create_model("maedet", structure=TINY, features_only=True).eval()
    x = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = features(x)
        final, every = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(every) == len(want) == len(model.feature_info)
        assert all(torch.equal(a, b) for a, b in zip(every, want, strict=True))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(last_two, want[-2:], strict=True))
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(early, want[:2], strict=True))


def test_prune_intermediate_layers_keeps_what_is_asked() -> None:
    model = timm.create_model("maedet", structure=TINY).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and model.num_classes == 0
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(model.stages) < len(TINY.stages)
    assert all(torch.equal(a, b) for a, b in zip(got, want[:2], strict=True))


@pytest.mark.slow
def test_each_pretrained_model_has_its_own_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authors_checkpoint, authors_state_dict
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(authors_checkpoint("s"), checkpoints / "latest.pth")  # what the shared name held before
    for size in ("s", "m"):
        torch.save(authors_checkpoint(size), checkpoints / f"maedet_{size}-gflv2_coco-latest.pth")
    for size in ("m", "s"):
        model = timm.create_model(f"maedet_{size}.gflv2_coco", pretrained=True)
        want = checkpoint_filter_fn(authors_state_dict(size), model)
        state = model.state_dict()
        assert all(torch.equal(state[key], tensor) for key, tensor in want.items())


def test_no_network_is_one_sentence_naming_the_local_way(tmp_path: Path) -> None:
    with pytest.raises(MaeDetError) as caught:
        timm.create_model(
            "maedet_s.gflv2_coco",
            pretrained=True,
            pretrained_cfg_overlay={"url": "http://127.0.0.1:9/x.pth"},
            cache_dir=tmp_path,
        )
    message = str(caught.value)
    assert "could not download" in message and "http://127.0.0.1:9/x.pth" in message
    assert "pretrained_cfg_overlay=dict(file=" in message and "--checkpoint" in message
    assert "\n" not in message and caught.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []  # nothing half-downloaded left behind


def _blocks(**stage_fields: object) -> list[dict[str, object]]:
    stage = {"class": "SuperResK1KXK1", "in": 8, "out": 16, "s": 2, "k": 3, "L": 1, "btn": 8, **stage_fields}
    return [{"class": "ConvKXBNRELU", "in": 3, "out": 8, "s": 2, "k": 3}, stage]


def _nested(depth: int) -> object:
    data: object = _blocks()
    for _ in range(depth):
        data = {"structure": data}
    return data


BAD_STRUCTURES = {
    "channels 10^400": _blocks(out=10**400),
    "channels over the limit": _blocks(out=16385, btn=8),
    "L 10^7": _blocks(L=10_000_000),
    "kernel 17": _blocks(k=17),
    "float channels": _blocks(out=16.0),
    "inf channels": _blocks(out=float("inf")),
    "bool depth": _blocks(L=True),
    "str kernel": _blocks(k="3"),
    "33 stages": [_blocks()[0]] + [{**_blocks()[1], "in": 8, "out": 8, "s": 1}] * 33,
    "nested 5000 deep": _nested(5000),
    "an int": 7,
    "a set": {1, 2},
}


@pytest.mark.parametrize("name", list(BAD_STRUCTURES))
def test_bad_structures_raise_one_structure_error(name: str) -> None:
    with pytest.raises(StructureError) as caught:
        timm.create_model("maedet", structure=BAD_STRUCTURES[name])
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_in_chans_is_bounded() -> None:
    with pytest.raises(StructureError, match="image channels"):
        timm.create_model("maedet", structure=TINY, in_chans=65)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "dev_urandom", "directory", "too_big", "deep_json"])
def test_structure_files_are_bounded(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever
    elif kind == "dev_zero":
        path = Path("/dev/zero")
    elif kind == "dev_urandom":
        path = Path("/dev/urandom")
    elif kind == "directory":
        path = tmp_path
    elif kind == "too_big":
        path.write_text("[" + "1," * 1_000_000 + "1]")
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StructureError) as caught:
        load_structure(path)
    assert "\n" not in str(caught.value)


def test_utf8_bom_json_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + TINY.to_json().encode())
    assert load_structure(path) == TINY


@pytest.mark.parametrize("structure", ["/dev/zero", "deep", "huge"])
def test_local_dir_with_a_hostile_structure(structure: str, tmp_path: Path) -> None:
    value: object = {"/dev/zero": "/dev/zero", "deep": _nested(500), "huge": _blocks(L=10**400)}[structure]
    config = {"architecture": "maedet", "pretrained_cfg": {}, "num_classes": 0, "model_args": {"structure": value}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MaeDetError, match="structure"):  # a path is refused before it is opened (issue 17.3)
        timm.create_model(f"local-dir:{tmp_path}")


def test_an_enormous_backbone_is_refused_before_timm_builds_it() -> None:
    """Issue 17: the widest, deepest structure the checks allow would need terabytes of weights."""
    from maedet.memory import MemoryEstimateError

    blocks = [{"class": "ConvKXBNRELU", "in": 3, "out": 64, "s": 2, "k": 3}]
    blocks += [
        {
            "class": "SuperResK1KXK1",
            "in": 64 if i == 0 else 16384,
            "out": 16384,
            "btn": 16384,
            "s": 1,
            "k": 15,
            "L": 256,
        }
        for i in range(4)
    ]
    with pytest.raises(MemoryEstimateError, match=r"the maedet backbone has about .* GiB of weights"):
        timm.create_model("maedet", structure={"blocks": blocks})
