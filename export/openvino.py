"""The OpenVINO IR form of an export: ``DIR/model.xml`` + ``model.bin``, converted from the exported ONNX file.

``ov.convert_model`` reads the very bytes written as the ONNX file (fp32, fp16 or INT8 Q/DQ: OpenVINO runs Q/DQ
natively; a detector's NMS becomes OpenVINO's NMS), so the IR computes what the file computes, and the pipeline
checks it against PyTorch in OpenVINO like the ONNX file in ONNX Runtime. The file's metadata (normalisation,
strides, postprocess, model name, ...) goes into the IR's ``rt_info`` with the same text encoding as the ONNX
``metadata_props``, so a consumer runs the IR without the model (:func:`read_ir_metadata`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maedet.openvino_runtime import OV_INSTALL_HINT, ov_calls, ov_metadata, ov_model, require_openvino, save_ov_ir

from .errors import ExportError, MissingDependencyError
from .metadata import decode_value, encode_value

__all__ = ["check_ir_folder", "convert_to_ir", "nncf_quantize", "read_ir_metadata", "write_ir", "write_nncf_ir"]


def convert_to_ir(onnx_bytes: bytes) -> Any:
    """The exported ONNX file as an ``ov.Model`` (one sentence when OpenVINO cannot convert a node)."""
    require_openvino()
    return ov_model(onnx_bytes, "the exported ONNX file")


def write_ir(model: Any, folder: str | os.PathLike[str], metadata: Mapping[str, Any]) -> Path:
    """Write the IR with ``metadata`` in its rt_info (staged, then renamed); returns the .xml path."""
    return save_ov_ir(model, folder, {key: encode_value(value) for key, value in metadata.items()})


def read_ir_metadata(source: str | os.PathLike[str] | Any, where: str | os.PathLike[str] = "the IR") -> dict[str, Any]:
    """The metadata of an IR written by maedet-export --openvino (its folder, its .xml, or a loaded model found at
    ``where``)."""
    if isinstance(source, (str, os.PathLike)):
        source, where = ov_model(source, repr(str(source))), source
    meta = {key: decode_value(key, text) for key, text in ov_metadata(source).items()}
    if "maedet_version" not in meta:
        raise ExportError(f"{str(where)!r} holds no maedet metadata (it was not written by maedet-export).")
    return meta


def check_ir_folder(folder: str | os.PathLike[str]) -> Path:
    """Refuse, before the export, an IR folder path that cannot be written: a file there, or no parent folder."""
    path = Path(folder)
    if not path.name or path.name in (".", ".."):
        raise ExportError(f"the OpenVINO IR folder {str(path)!r} names no folder.")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ExportError(f"the OpenVINO IR folder {str(path)!r} exists and is not a folder.")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write the OpenVINO IR folder {str(path)!r}: {str(path.parent)!r} does not exist.")
    return path


def nncf_quantize(model: Any, batches: Sequence[np.ndarray]) -> Any:
    """NNCF's post-training INT8 of an fp32 ``ov.Model`` on ``batches`` (normalised images as the model takes
    them): symmetric 8-bit weights and activations, OpenVINO's own fused form (what ``ov-cpu-int8`` runs).

    NNCF's progress bars and notices are left out, like ONNX Runtime's quantizer notices are.
    """
    try:
        import nncf
    except ImportError:
        hint = OV_INSTALL_HINT
        raise MissingDependencyError(f"NNCF is not installed (it makes the OpenVINO INT8 model): {hint}.") from None
    nncf.set_log_level(logging.ERROR)
    dataset = nncf.Dataset(list(batches))
    with contextlib.redirect_stdout(io.StringIO()), ov_calls("NNCF could not quantize the model"):
        return nncf.quantize(model, dataset, subset_size=len(batches), preset=nncf.QuantizationPreset.PERFORMANCE)


def write_nncf_ir(
    fp32_onnx: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    calib: str | os.PathLike[str] | None = None,
    calib_batches: int | None = None,
    seed: int = 0,
) -> Path:
    """NNCF's INT8 of an exported fp32 file, calibrated on the images the exporter would use (``calib`` sampled
    with ``seed``, or synthetic batches), written as an IR carrying the file's metadata (precision int8, int8 mode
    ``nncf``, the calibration source); returns the .xml path."""
    from .metadata import read_metadata
    from .precision import calibration_batches

    meta = read_metadata(fp32_onnx)
    batch, (h, w) = int(meta["batch"]), (int(v) for v in meta["input_size"][1:])
    batches, _ = calibration_batches(calib=calib, batches=calib_batches, batch=batch, input_size=(h, w),
                                     mean=meta["mean"], std=meta["std"], seed=seed)  # fmt: skip
    model = nncf_quantize(ov_model(fp32_onnx), [batches[i] for i in range(len(batches))])
    source = "synthetic" if calib is None else f"{len(batches) * batch} images from {calib}, seed {seed}"
    meta.update(precision="int8", int8_mode="nncf", int8_calibration=source)
    return write_ir(model, folder, meta)
