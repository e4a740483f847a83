"""Cost figures of a Structure equal the table of docs/design.md §2 and what the built module really has."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from maedet.zoo import builtin_structure, conv_layers, cost, gmacs, official_flops, param_count

# docs/design.md §2: official FLOPs @224, @480, params, conv layers.
DESIGN_TABLE = {
    "maedet_s": (2_394_002_800, 10_992_870_000, 21_233_120, 79),
    "maedet_m": (4_420_872_120, 20_299_923_000, 25_843_536, 91),
    "maedet_l": (7_512_161_580, 34_494_619_500, 43_879_552, 109),
    "r50_like_init": (1_686_741_504, 7_745_241_600, 9_639_584, 16),
}


@pytest.mark.parametrize("name", list(DESIGN_TABLE))
def test_costs_equal_design_table(name: str) -> None:
    flops224, flops480, params, layers = DESIGN_TABLE[name]
    structure = builtin_structure(name)
    assert official_flops(structure, 224) == flops224
    assert official_flops(structure, 480) == flops480
    assert param_count(structure) == params
    assert conv_layers(structure) == layers
    figures = cost(structure, 480)
    assert (figures.flops, figures.params, figures.layers) == (flops480, params, layers)
    assert figures.gmacs == gmacs(structure, 224)
    assert cost(structure, 224).flops == flops224


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DESIGN_TABLE))
def test_params_equal_built_module(name: str) -> None:
    structure = builtin_structure(name)
    for num_classes in (0, 1000, 7):
        model = timm.create_model("maedet", structure=structure, num_classes=num_classes)
        assert sum(p.numel() for p in model.parameters()) == param_count(structure, num_classes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "height", "width", "num_classes"),
    [("maedet_s", 224, 224, 0), ("maedet_m", 320, 192, 1000), ("maedet_l", 224, 224, 0), ("r50_like_init", 96, 160, 0)],
)
def test_gmacs_match_flop_counter(name: str, height: int, width: int, num_classes: int) -> None:
    structure = builtin_structure(name)
    model = timm.create_model("maedet", structure=structure, num_classes=num_classes).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, height, width))
    counted = counter.get_total_flops() / 2 / 1e9  # FlopCounterMode reports 2×MACs
    assert gmacs(structure, height, width, num_classes) == pytest.approx(counted, rel=1e-12)
