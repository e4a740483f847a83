"""Validation during training, through exactly the code ``maedet-eval`` runs (letterbox, PyTorch backend, COCOeval)."""

from __future__ import annotations

from maedet.detect.backends import TorchBackend
from maedet.detect.evaluate import evaluate
from maedet.zoo.gfl import GFocalV2

__all__ = ["LOGGED_STATS", "validate"]

LOGGED_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def validate(
    detector: GFocalV2, annotations: str, images: str, scale: tuple[int, int], device: str
) -> dict[str, float]:
    """COCO box AP, AP50, AP75, APs/m/l of ``detector`` on the val set; the detector is back in train mode after."""
    was_training = detector.training
    try:
        result = evaluate(TorchBackend(detector, device), annotations, images, scale=scale, batch_size=4)
    finally:
        detector.train(was_training)
    return {name: result.stats[name] for name in LOGGED_STATS}
