"""Lower precision from the graph itself: fp16 tensors, or static INT8 in Q/DQ form.

Both serve TensorRT 11 (which takes precision only from the graph) and ONNX Runtime. The INT8 options are chosen
so that ONE file serves ONNX Runtime CPU and TensorRT:

* QuantFormat.QDQ: QuantizeLinear/DequantizeLinear pairs around float ops. TensorRT reads them as explicit
  quantization; ONNX Runtime fuses them into QLinearConv and friends.
* Signed int8 for activations AND weights, symmetric (zero point 0): TensorRT only supports symmetric int8
  Q/DQ; ONNX Runtime runs S8S8 natively.
* Per-channel weight scales (axis 0 of each conv weight): supported by both, and far more accurate than a
  single scale per tensor after BN folding (folded channels differ in magnitude by orders of magnitude).
* Biases stay float (QuantizeBias off): TensorRT's parser rejects a DequantizeLinear on an int32 bias, and
  dedicated Q/DQ pairs per consumer (DedicatedQDQPair), the layout TensorRT's fusions expect.
* No reduce_range: 7-bit weights cost accuracy and TensorRT does not need them.

That portable file is what ``--int8`` writes. Measured on an AVX2 CPU without VNNI (MAE-DET-M, 640×640, 2 threads),
ONNX Runtime runs it no faster than fp32 (~1.0×): on x86 it rewrites signed int8 Q/DQ to uint8 with zero point 128,
so the float Relu between each conv's Q/DQ pairs cannot be folded away and 30 convs and most Adds stay float
(allowing int8 kernels with ``session.qdqisint8allowed=1`` fuses everything but is 0.36× — slow S8S8 kernels).
``int8_mode="cpu"`` (``--int8-mode cpu``) therefore writes the ONNX Runtime CPU layout instead: uint8 asymmetric
activations (Relu folds into the zero point, every Conv/Add becomes QLinearConv/QLinearAdd), int8 symmetric
per-channel weights: 2.0× faster than fp32 there, but TensorRT rejects it (non-zero zero points).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .check import synthetic_images
from .errors import ExportError

__all__ = ["IMAGE_SUFFIXES", "INT8_MODES", "calibration_batches", "load_calibration_images", "quantize_int8", "to_fp16"]

# portable: symmetric signed int8 (TensorRT and ONNX Runtime); cpu: uint8 asymmetric activations (ONNX Runtime x86).
INT8_MODES = ("portable", "cpu")
logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """Every float tensor and weight in fp16; with ``keep_io_types`` the graph takes and returns float32.

    ONNX Runtime's converter is used with an empty op block list: our graphs hold only Conv, Relu, Add,
    AveragePool (and Gemm/GlobalAveragePool for logits), which ONNX Runtime CPU and TensorRT both run in fp16.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=[], disable_shape_infer=False)


def load_calibration_images(
    folder: str | os.PathLike[str],
    count: int,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Up to ``count`` images from ``folder`` (sorted names), resized to ``input_size`` and normalized.

    The whole image is resized (no crop) as a detector would, with the model's pretrained mean/std.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    if not root.is_dir():
        raise ExportError(f"calibration folder {str(root)!r} does not exist.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"calibration folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    resample = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST}.get(interpolation, Image.BILINEAR)
    h, w = input_size
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    images = []
    for path in files[:count]:
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((w, h), resample)
        except (OSError, UnidentifiedImageError):
            raise ExportError(f"calibration image {str(path)!r} cannot be read.") from None
        arr = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        images.append((arr - m) / s)
    return np.stack(images).astype(np.float32)


def calibration_batches(
    *,
    calib: str | os.PathLike[str] | None,
    batches: int,
    batch: int,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> tuple[list[np.ndarray], str]:
    """The calibration batches and a note saying where they came from.

    The note is logged too: as information for real images, as a warning for synthetic ones (real images give
    more accurate scales, and the user must see that they were not used).
    """
    h, w = input_size
    if calib is not None:
        images = load_calibration_images(calib, batches * batch, (h, w), mean, std, interpolation)
        split = [images[i : i + batch] for i in range(0, len(images), batch)]
        note = f"calibrated on {len(images)} images from {calib}"
        logger.info(note)
        return split, note
    data = synthetic_images(batches * batch, h, w, mean, std, seed=2022)
    split = [data[i : i + batch] for i in range(0, len(data), batch)]
    note = (
        f"INT8 calibrated on {batches} synthetic batches (no --calib DIR given); "
        "scales from real images are more accurate."
    )
    logger.warning(note)
    return split, note


def _batch_reader(input_name: str, batches: Sequence[np.ndarray]) -> Any:
    """An onnxruntime.quantization.CalibrationDataReader over in-memory batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._iter, None)
            return None if item is None else {input_name: item}

        def rewind(self) -> None:
            self._iter = iter(batches)

    return BatchReader()


def quantize_int8(
    model: onnx.ModelProto,
    data: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    mode: str = "portable",
) -> onnx.ModelProto:
    """Static INT8 in Q/DQ form, per-channel weights, calibrated on ``data`` (see ``calibration_batches``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if mode not in INT8_MODES:
        raise ExportError(f"INT8 mode must be one of {', '.join(INT8_MODES)}, not {mode!r}.")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise ExportError(f"calibration method must be one of {', '.join(methods)}, not {calibrate_method!r}.")
    reader = _batch_reader(model.graph.input[0].name, data)
    with tempfile.TemporaryDirectory(prefix="maedet-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=False,
            activation_type=QuantType.QInt8 if mode == "portable" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[calibrate_method],
            extra_options=(
                {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}
                if mode == "portable"
                else {"ActivationSymmetric": False, "WeightSymmetric": True}
            ),
        )
        return onnx.load(str(dst))
