"""A TensorRT engine of an exported detector, behind the same call as the PyTorch model and the ONNX file.

The engine is built from a detector file with NMS inside (``maedet-export NAME --onnx FILE``, static batch and
size); that file's metadata says how to feed it (mean, std, input size) and what its labels are. The engine runs
through the runtime layer (:class:`maedet.runtime.TrtEngine`), so it needs an NVIDIA GPU and ``maedet[gpu]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from maedet.errors import MaeDetError
from maedet.runtime import TrtEngine
from maedet.zoo.gfl_postprocess import Detections

from .backends import Backend

__all__ = ["EngineBackend"]


class EngineBackend(Backend):
    """``engine`` was built from ``onnx_path`` (a static detector file that ends in detections)."""

    def __init__(self, engine: TrtEngine, onnx_path: str | os.PathLike[str]) -> None:
        from maedet.export.detector_metadata import read_detector_metadata
        from maedet.export.metadata import normalisation

        meta = read_detector_metadata(onnx_path)
        if meta["outputs"] != "detections" or meta.get("dynamic"):
            raise MaeDetError(f"{str(onnx_path)!r} must be a static-size detector file with NMS inside.")
        self.engine = engine
        self.name = str(meta.get("model_name", Path(onnx_path).stem))
        self.num_classes = int(meta["num_classes"])
        self.mean, self.std = normalisation(meta, repr(str(onnx_path)))
        self.fixed_hw = (int(meta["input_size"][1]), int(meta["input_size"][2]))
        self.max_batch = int(meta["batch"])
        self.input_uint8 = meta.get("input_dtype") == "uint8"

    def __call__(self, batch: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        from maedet.export.detector_graph import DETECTION_OUTPUTS, unpad_detections

        outs = self.engine.run(batch.numpy())
        return unpad_detections(*(outs[name] for name in DETECTION_OUTPUTS))
