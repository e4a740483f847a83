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

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maedet.errors import MaeDetError
from maedet.images import read_image
from maedet.letterbox import collate, letterbox

from .check import synthetic_images
from .errors import ExportError

__all__ = [
    "DEFAULT_CALIB_IMAGES",
    "IMAGE_SUFFIXES",
    "INT8_MODES",
    "CalibrationImages",
    "calibration_batches",
    "calibration_files",
    "load_calibration_images",
    "quantize_int8",
    "sample_files",
    "to_fp16",
]

# portable: symmetric signed int8 (TensorRT and ONNX Runtime); cpu: uint8 asymmetric activations (ONNX Runtime x86).
INT8_MODES = ("portable", "cpu")
logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Images sampled from a --calib folder by default (all of a smaller folder). ONNX Runtime's and TensorRT's guides
# suggest hundreds; 128 keeps a CPU calibration at 640×640 within minutes.
DEFAULT_CALIB_IMAGES = 128
SYNTHETIC_CALIB_BATCHES = 8  # synthetic images carry no more information in 128 copies


def to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """Every float tensor and weight in fp16; with ``keep_io_types`` the graph takes and returns float32.

    ONNX Runtime's converter is used with an empty op block list: our graphs hold only Conv, Relu, Add,
    AveragePool (and Gemm/GlobalAveragePool for logits), which ONNX Runtime CPU and TensorRT both run in fp16.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=keep_io_types, op_block_list=[], disable_shape_infer=False)


def calibration_files(folder: str | os.PathLike[str], batch: int = 1) -> list[Path]:
    """The image files under ``folder`` (sorted), or one sentence saying why it cannot calibrate.

    Cheap (names only), so the CLI and :class:`~maedet.export.ExportOptions` refuse a bad folder before any export.
    """
    root = Path(folder)
    if not root.exists():
        raise ExportError(f"calibration folder {str(root)!r} does not exist.")
    if not root.is_dir():
        raise ExportError(f"calibration folder {str(root)!r} is not a folder; give a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"calibration folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    if len(files) < batch:
        raise ExportError(
            f"calibration folder {str(root)!r} holds {len(files)} images, fewer than one batch of {batch}."
        )
    return files


def sample_files(files: Sequence[Path], count: int, seed: int) -> list[Path]:
    """``count`` files drawn across the whole list without replacement (seeded), not the first ``count`` by name."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(files), size=min(count, len(files)), replace=False)
    return [files[int(i)] for i in picked]


def _read_calibration_image(path: Path) -> np.ndarray:
    """RGB uint8 as inference reads it; a decompression bomb (beyond PIL's MAX_IMAGE_PIXELS) is one sentence."""
    try:
        return read_image(path, "calibration image")
    except MaeDetError as exc:
        raise ExportError(str(exc)) from None


def load_calibration_images(
    files: Sequence[str | os.PathLike[str]], input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """``files`` preprocessed exactly as inference does (:func:`maedet.letterbox.letterbox` to the fixed
    input size, normalised, zero-padded at the bottom and right), as one float32 batch."""
    items = [letterbox(_read_calibration_image(Path(f)), fixed_hw=tuple(input_size)) for f in files]
    return collate(items, mean, std).numpy()


class CalibrationImages(Sequence[np.ndarray]):
    """Batches of letterboxed images, read when asked for: 128 images at 640×640 would hold 630 MB at once."""

    def __init__(
        self,
        files: Sequence[Path],
        batch: int,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.files, self.batch, self.input_size = list(files), batch, input_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.files) // self.batch

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        chunk = self.files[index * self.batch : (index + 1) * self.batch]
        return load_calibration_images(chunk, self.input_size, self.mean, self.std)


def calibration_batches(
    *,
    calib: str | os.PathLike[str] | None,
    batches: int | None,
    batch: int,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> tuple[Sequence[np.ndarray], str]:
    """The calibration batches and a note saying where they came from.

    From a folder: ``batches`` full batches (default: enough for DEFAULT_CALIB_IMAGES images, or all the folder
    holds) sampled across it with ``seed``, read lazily. Without one: ``batches`` (default SYNTHETIC_CALIB_BATCHES)
    synthetic batches. The note is logged too: as information for real images, as a warning for synthetic ones
    (real images give more accurate scales, and the user must see that they were not used).
    """
    h, w = input_size
    if calib is not None:
        files = calibration_files(calib, batch)
        wanted = (batches * batch) if batches is not None else -(-DEFAULT_CALIB_IMAGES // batch) * batch
        picked = sample_files(files, min(wanted, len(files) // batch * batch), seed)
        note = f"INT8 calibrated on {len(picked)} of the {len(files)} images in {calib} (sampled with seed {seed})"
        logger.info(note)
        return CalibrationImages(picked, batch, (h, w), mean, std), note
    count = batches if batches is not None else SYNTHETIC_CALIB_BATCHES
    data = synthetic_images(count * batch, h, w, mean, std, seed=2022)
    split = [data[i : i + batch] for i in range(0, len(data), batch)]
    note = (
        f"INT8 calibrated on {count} synthetic batches (no --calib DIR given); scales from real images are more "
        "accurate."
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


class _QuantizerNotices(logging.Filter):
    """Drops ONNX Runtime's quantizer notices (below ERROR) that it logs to the root logger.

    They are "Please consider pre-processing before quantization" (for graphs without shapes or with unfused ops;
    ours come from the exporter with BN folded and every shape inferred) and, for a detector, one "Expected bias ...
    to be an initializer" per conv (its biases are computed in the graph; biases stay float in both INT8 modes'
    Q/DQ anyway): 120 lines that say nothing the user can act on.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextlib.contextmanager
def _without_quantizer_notices() -> Iterator[None]:
    notices = _QuantizerNotices()
    root = logging.getLogger()
    root.addFilter(notices)
    try:
        yield
    finally:
        root.removeFilter(notices)


def _cache_argument(quantize_static: Any, cache: str | os.PathLike[str] | None) -> dict[str, str]:
    """``calibration_cache_path`` where this ONNX Runtime's quantize_static takes it (feature-detected)."""
    import inspect

    if cache is None or "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}
    return {"calibration_cache_path": str(cache)}


def quantize_int8(
    model: onnx.ModelProto,
    data: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    mode: str = "portable",
    exclude_nodes: Sequence[str] = (),
    calibration_cache: str | os.PathLike[str] | None = None,
) -> onnx.ModelProto:
    """Static INT8 in Q/DQ form, per-channel weights, calibrated on ``data`` (see ``calibration_batches``).

    ``exclude_nodes``: node names ONNX Runtime's quantizer leaves in float (no Q/DQ of their own, float weights).
    ``calibration_cache``: a JSON file of the activation ranges, written by the first call and read by the next
    ones instead of calibrating again (where quantize_static has calibration_cache_path, as 1.32 does; without it
    every call calibrates again, on the same images to the same ranges).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if mode not in INT8_MODES:
        raise ExportError(f"INT8 mode must be one of {', '.join(INT8_MODES)}, not {mode!r}.")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    if calibrate_method not in methods:
        raise ExportError(f"calibration method must be one of {', '.join(methods)}, not {calibrate_method!r}.")
    reader = _batch_reader(model.graph.input[0].name, data)
    with tempfile.TemporaryDirectory(prefix="maedet-int8-") as tmp, _without_quantizer_notices():
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
            nodes_to_exclude=list(exclude_nodes),
            **_cache_argument(quantize_static, calibration_cache),
            extra_options=(
                {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}
                if mode == "portable"
                else {"ActivationSymmetric": False, "WeightSymmetric": True}
            ),
        )
        return onnx.load(str(dst))
