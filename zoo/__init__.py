"""The model zoo: the Structure contract, its cost figures, and MAE-DET backbones as timm models."""

from .cost import Cost, conv_layers, cost, gmacs, macs, official_flops, param_count
from .maedet import MaeDet, checkpoint_filter_fn, fuse_bn
from .structure import FeaturePoint, Stage, Stem, Structure, builtin_structure, load_structure

__all__ = [
    "Cost",
    "FeaturePoint",
    "MaeDet",
    "Stage",
    "Stem",
    "Structure",
    "builtin_structure",
    "checkpoint_filter_fn",
    "conv_layers",
    "cost",
    "fuse_bn",
    "gmacs",
    "load_structure",
    "macs",
    "official_flops",
    "param_count",
]
