"""The model zoo: the Structure contract, its cost figures, safe checkpoint loading, MAE-DET backbones as timm
models, and GFocalV2 detectors built on them."""

from .checkpoint import CheckpointError, load_checkpoint
from .cost import Cost, conv_layers, cost, gmacs, macs, official_flops, param_count
from .detectors import DETECTORS, create_detector, list_detectors
from .gfl import GFocalV2
from .gfl_postprocess import Detections, PostprocessConfig
from .maedet import MaeDet, checkpoint_filter_fn, fuse_bn
from .structure import FeaturePoint, Stage, Stem, Structure, builtin_structure, feature_levels, load_structure

__all__ = [
    "DETECTORS",
    "CheckpointError",
    "Cost",
    "Detections",
    "FeaturePoint",
    "GFocalV2",
    "MaeDet",
    "PostprocessConfig",
    "Stage",
    "Stem",
    "Structure",
    "builtin_structure",
    "checkpoint_filter_fn",
    "conv_layers",
    "cost",
    "create_detector",
    "feature_levels",
    "fuse_bn",
    "gmacs",
    "list_detectors",
    "load_checkpoint",
    "load_structure",
    "macs",
    "official_flops",
    "param_count",
]
