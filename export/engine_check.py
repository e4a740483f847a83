"""The one engine check: a TensorRT engine against ONNX Runtime CPU running the ONNX file it was built from.

Any exported file, whatever the kind of model: the images are synthetic, at the file's input size, normalisation
and input type (its metadata); outputs are judged by ENGINE_TOLERANCES, and a file that ends in detections (NMS
in the graph) by its detections, since two runtimes may order or tip near-threshold boxes differently.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from maedet.runtime import TrtEngine, ort_session, run_session

from .check import ENGINE_TOLERANCES, CheckReport, compare_outputs, synthetic_images, to_pixels
from .detector_check import BOX_REL_TOL, compare_detections
from .detector_metadata import read_detector_metadata
from .metadata import normalisation, read_metadata

__all__ = ["EngineLike", "check_engine", "engine_inputs"]


class EngineLike(Protocol):
    """What the check runs: a loaded engine (``TrtEngine``), or anything that runs a batch the same way."""

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def engine_inputs(onnx_path: str | os.PathLike[str], batch: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """The file's metadata (a detector's checked) and ``batch`` synthetic images in the form the file takes."""
    meta = read_metadata(onnx_path)
    if meta.get("task") == "detection":
        meta = read_detector_metadata(onnx_path)
    mean, std = normalisation(meta, repr(str(onnx_path)))
    h, w = meta["input_size"][1:]
    images = synthetic_images(batch, h, w, mean, std, seed=seed)
    if meta.get("input_dtype") == "uint8":
        images = to_pixels(images, mean, std)
    return meta, images


def check_engine(
    engine: str | os.PathLike[str] | EngineLike,
    onnx_path: str | os.PathLike[str],
    *,
    batch: int = 1,
    seed: int = 77,
) -> CheckReport:
    """The engine (a path, or a loaded one) against ONNX Runtime CPU on the same images, as a :class:`CheckReport`:
    per-output figures, or for a file that ends in detections, the detections compared."""
    meta, images = engine_inputs(onnx_path, batch, seed)
    precision = str(meta.get("precision", "fp32"))
    runner = engine if hasattr(engine, "run") else TrtEngine.load(engine)  # type: ignore[arg-type]
    got = runner.run(images)
    ref = run_session(ort_session(onnx_path, what=f"the {precision} ONNX file"), images)
    if meta.get("outputs") == "detections":
        rule = f"same count and labels, boxes within {BOX_REL_TOL:g} relative"
        report = CheckReport(precision, rule, tuple(images.shape), ["TensorRT"])
        report.detections = compare_detections(ref, got)
        return report
    return compare_outputs(
        ref, got, precision, input_shape=images.shape, providers=["TensorRT"], tolerance=ENGINE_TOLERANCES[precision]
    )
