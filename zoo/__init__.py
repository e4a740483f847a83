"""The model zoo: the Structure contract, its cost figures, safe checkpoint loading, and MAE-DET backbones as timm
models."""

from .checkpoint import CheckpointError, load_checkpoint
from .cost import Cost, conv_layers, cost, gmacs, macs, official_flops, param_count
from .maedet import MaeDet, checkpoint_filter_fn, fuse_bn
from .structure import FeaturePoint, Stage, Stem, Structure, builtin_structure, feature_levels, load_structure

__all__ = [
    "CheckpointError",
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
    "feature_levels",
    "fuse_bn",
    "gmacs",
    "load_checkpoint",
    "load_structure",
    "macs",
    "official_flops",
    "param_count",
]
