"""The one checkpoint reader: one download path and cache for a backbone and its detector, one key report."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from maedet.errors import MaeDetError
from maedet.zoo import checkpoint_filter_fn, create_detector
from maedet.zoo.detectors import DETECTORS, detector_state_dict


def test_a_backbone_and_its_detector_share_one_downloaded_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authors_detector_state
) -> None:
    """The authors publish one file per size (the whole detector); both loaders find it under one cache name, so
    it is downloaded once (here: never, the cache holds it and there is no network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"state_dict": authors_detector_state("maedet_s_gfl")}, cache / "maedet_s-gflv2_coco-latest.pth")
    detector = create_detector("maedet_s_gfl", pretrained=True)
    backbone = timm.create_model("maedet_s.gflv2_coco", pretrained=True, features_only=True)
    want = backbone.state_dict()
    got = {k.removeprefix("backbone."): v for k, v in detector.state_dict().items() if k.startswith("backbone.")}
    assert set(got) == set(want)
    assert all(torch.equal(got[key], want[key]) for key in want)
    assert sorted(p.name for p in cache.iterdir()) == ["maedet_s-gflv2_coco-latest.pth"]


def test_the_detector_and_the_backbone_name_the_same_authors_file() -> None:
    for size in ("s", "m", "l"):
        assert DETECTORS[f"maedet_{size}_gfl"].url == timm.models.get_pretrained_cfg(f"maedet_{size}.gflv2_coco").url


def test_backbone_and_detector_misfits_are_reported_alike(authors_state_dict, authors_detector_state) -> None:
    """One report for every loader: ``N missing key(s) (…)``, counted and shown the same way."""
    backbone_state = authors_state_dict("s")
    del backbone_state["backbone.body.block_list.3.block_list.9.conv2.conv1.weight"]
    with pytest.raises(MaeDetError) as backbone_error:
        checkpoint_filter_fn(backbone_state, timm.create_model("maedet_s"))
    detector_state = authors_detector_state("maedet_s_gfl")
    del detector_state["neck.fpn_convs.4.conv.bias"]
    with pytest.raises(MaeDetError) as detector_error:
        detector_state_dict(detector_state, create_detector("maedet_s_gfl"))
    assert ": 1 missing key (stages.2.blocks.9.conv2.conv.weight)." in str(backbone_error.value)
    assert ": 1 missing key (neck.extra_convs.1.bias)." in str(detector_error.value)


def test_a_training_backbone_misfit_names_shapes_like_every_other_loader(tmp_path: Path) -> None:
    from maedet.train.model import load_backbone_weights

    path = tmp_path / "m.pth"
    torch.save(timm.create_model("maedet_m").state_dict(), path)
    with pytest.raises(MaeDetError) as caught:
        load_backbone_weights(create_detector("maedet_s_gfl"), str(path))
    message = str(caught.value)
    assert message.startswith(f"--backbone-checkpoint {path} does not fit the backbone: ")
    assert "misshapen keys (stem.conv.weight (" in message and ") vs model (" in message
