"""Shared fixtures: the authors' checkpoint layout, built from their published key list (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


def make_authors_state_dict(size: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A backbone state dict in the authors' exact key layout and shapes (random values, sane BN stats)."""
    keys = json.loads((DATA / "official_checkpoint_keys" / f"maedet_{size}.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in keys.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("bn1.weight", "running_mean", "bn1.bias")):
            out[key] = torch.randn(shape, generator=gen) * 0.1 + (1.0 if key.endswith("weight") else 0.0)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            out[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return out


def make_authors_checkpoint(size: str, seed: int = 0) -> dict:
    """The whole mmdetection checkpoint: meta, backbone, neck and head keys, like the authors' latest.pth."""
    state = make_authors_state_dict(size, seed)
    state["neck.lateral_convs.0.conv.weight"] = torch.randn(96, 48, 1, 1)
    state["bbox_head.gfl_cls.weight"] = torch.randn(80, 96, 3, 3)
    state["bbox_head.gfl_cls.bias"] = torch.randn(80)
    return {"meta": {"epoch": 24, "mmdet_version": "2.x", "CLASSES": ("person", "bicycle")}, "state_dict": state}


@pytest.fixture(scope="session")
def authors_state_dict():
    """Factory: ``authors_state_dict(size, seed=0)``, a backbone state dict in the authors' key layout."""
    return make_authors_state_dict


@pytest.fixture(scope="session")
def authors_checkpoint():
    """Factory: ``authors_checkpoint(size, seed=0)``, an mmdetection checkpoint (meta, backbone, neck, head)."""
    return make_authors_checkpoint


@pytest.fixture(scope="session")
def authors_checkpoint_file(tmp_path_factory: pytest.TempPathFactory):
    """Factory: path to an authors'-layout latest.pth for size 's', 'm' or 'l' (written once per session)."""
    root = tmp_path_factory.mktemp("authors_ckpt")
    made: dict[str, Path] = {}

    def make(size: str) -> Path:
        if size not in made:
            path = root / f"maedet-{size}" / "latest.pth"
            path.parent.mkdir()
            torch.save(make_authors_checkpoint(size), path)
            made[size] = path
        return made[size]

    return make


def make_authors_detector_state(name: str, seed: int = 0, num_classes: int | None = None) -> dict[str, torch.Tensor]:
    """A whole-detector state dict in the authors' exact layout (``maedet_{s,m,l}_gfl``), every tensor random.

    Every norm is randomised (BN weights, biases and running statistics; GN affine), so a tensor that lands in
    the wrong place changes the outputs. ``num_classes`` resizes the class conv to ``num_classes + 1`` channels.
    """
    keys = json.loads((DATA / "official_checkpoint_keys" / f"{name}.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in keys.items():
        if num_classes is not None and key.startswith("bbox_head.gfl_cls."):
            shape = [num_classes + 1, *shape[1:]]
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("integral.project"):
            out[key] = torch.linspace(0, shape[0] - 1, shape[0])
        elif key.endswith(("scale", "bn1.weight", "gn.weight")):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bn1.bias", "gn.bias")) or len(shape) == 1:
            out[key] = torch.randn(shape, generator=gen) * 0.1
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            out[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return out


@pytest.fixture(scope="session")
def authors_detector_state():
    """Factory: ``authors_detector_state(name, seed=0, num_classes=None)``, a whole-detector state dict in the
    authors' layout (``maedet_{s,m,l}_gfl``) with every norm randomised."""
    return make_authors_detector_state


def randomize_bn(model: torch.nn.Module, seed: int = 0, weight: tuple[float, float] = (0.3, 0.6)) -> torch.nn.Module:
    """Random BN affine and running statistics, in place, so parity checks exercise every channel.

    A fresh timm model zero-initialises the last BN of every residual branch (``zero_init_last``): its branches add
    nothing, and an exporter that dropped or mangled them would still match. ``weight`` bounds the BN scales (small
    enough that a deep random net stays well inside fp16's range).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * (weight[1] - weight[0]) + weight[0])
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


@pytest.fixture(scope="session")
def random_bn():
    """Factory: ``random_bn(model, seed=0)`` randomises every BN of ``model`` in place (see :func:`randomize_bn`)."""
    return randomize_bn
