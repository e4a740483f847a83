"""Whole detectors in the bench: backbone + FPN + GFocalV2 head, with and without decoding and NMS.

With untrained weights the class scores sit at the focal-loss prior (about 0.005 after the quality factor), so
no point would pass the 0.05 threshold and NMS would cost nothing. The benched detectors therefore score class
0 high at every point: every point kept by the per-level top-1000 becomes a candidate of that class (about 2.5k
per image at 640×640, 3.4k at 800×1088) and NMS works through them — the heavy end of what a trained detector
gives on COCO (hundreds to a few thousand candidates per image, spread over classes). Timing the ``+nms`` rows
is therefore a fixed, stated workload, the same for every detector at the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from maedet.export.detector import resolve_detector
from maedet.export.detector_graph import RawOutputs
from maedet.export.model_source import ModelSource
from maedet.zoo import GFocalV2, Structure, create_detector
from maedet.zoo.detectors import GENERIC_NAME as GENERIC_DETECTOR

from .models import NMS_SUFFIX, ModelSpec

__all__ = [
    "CANDIDATE_CLASS_BIAS",
    "DetectorSource",
    "Predict",
    "bench_detector",
    "detector_source",
    "structure_detectors",
]

CANDIDATE_CLASS_BIAS = 2.0  # class 0's logit bias: sigmoid 0.88 × quality ≈ 0.5 → scores ≈ 0.44 > 0.05


class Predict(nn.Module):
    """The PyTorch detector with NMS: ``predict`` on the whole input (torchvision's batched NMS)."""

    def __init__(self, detector: GFocalV2) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> list:
        return self.detector.predict(x)


@dataclass
class DetectorSource(ModelSource):
    """A detector's deploy form for the bench; ``detector`` is what ONNX exports start from."""

    detector: GFocalV2 | None = None


def bench_detector(name: str, seed: int = 0, structure: Structure | None = None) -> GFocalV2:
    """The deploy form (BN folded) with the fixed NMS workload of the module docstring; ``name`` 'gfl' with a
    ``structure``: a searched backbone's detector, with the neck and head of ResNet-50's (FPN 256, 4 stacked convs)."""
    torch.manual_seed(seed)
    detector = create_detector(name, structure=structure)
    with torch.no_grad():
        detector.head.cls_out.bias[0] = CANDIDATE_CLASS_BIAS
    return resolve_detector(detector)


def structure_detectors(spec: ModelSpec) -> list[ModelSpec]:
    """A searched structure's row as whole detectors, ``NAME_gfl`` and ``NAME_gfl+nms``, compared with ResNet-50's
    and ResNet-101's detectors (what ``maedet-search run --detector-budget`` prices): ``--detector --structure``."""
    if spec.structure is None or spec.detector:
        return [spec]
    return [
        ModelSpec(f"{spec.label}_gfl{suffix}", GENERIC_DETECTOR, spec.structure, detector=True, nms=bool(suffix))
        for suffix in ("", NMS_SUFFIX)
    ]


def detector_source(spec: ModelSpec) -> DetectorSource:
    detector = bench_detector(spec.name, structure=spec.structure)
    module = Predict(detector) if spec.nms else RawOutputs(detector)
    return DetectorSource(
        module=module.eval(),
        model_name=spec.label,
        output_names=("num_dets", "boxes", "scores", "labels") if spec.nms else detector.output_names,
        strides=detector.strides,
        structure=None,
        mean=detector.mean,
        std=detector.std,
        in_chans=3,
        size_multiple=32,
        outputs="detections" if spec.nms else "raw",
        detector=detector,
    )
