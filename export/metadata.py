"""What an exported file says about itself: stored as ONNX ``metadata_props`` (string → string).

A consumer (the bench, a detector, ``maedet-export --info``) can preprocess and interpret the outputs from the
file alone: the input size, colour order, pixel scale and mean/std, output names with their strides, the precision,
the structure, and which weights and INT8 calibration images made it. Text values are stored as they are (``fp16``,
not ``"fp16"``), so any ONNX tool shows them plainly; numbers, lists and mappings as JSON text. Files written before
that stored every value as JSON, and still read back the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from .errors import ExportError

__all__ = [
    "METADATA_KEYS",
    "TEXT_KEYS",
    "apply_metadata",
    "build_metadata",
    "decode_value",
    "encode_value",
    "file_sha256",
    "format_metadata",
    "normalisation",
    "read_metadata",
    "weights_identity",
]

# Every key export writes. Numbers, booleans, lists and mappings are JSON so they survive the round trip exactly;
# the TEXT_KEYS are plain text.
METADATA_KEYS = (
    "model_name",
    "structure",
    "outputs",
    "output_names",
    "output_strides",
    "input_name",
    "input_size",
    "batch",
    "dynamic",
    "mean",
    "std",
    "precision",
    "io_dtype",
    "opset",
    "maedet_version",
    "color_order",
    "pixel_scale",
    "weights",
    "weights_sha256",
    "int8_calibration",
    "int8_mode",
    "int8_float_layers",  # with --max-ap-drop: the layers kept in float, and the search's record (int8_budget.py)
    "int8_budget",
    # detectors' own
    "task",
    "input_dtype",
    "num_classes",
    "cls_channels",
    "strides",
    "postprocess",
)
# Values that are text, whatever they look like (a weights path "123" stays a string). Detector files add theirs.
TEXT_KEYS = frozenset(
    {
        "model_name",
        "outputs",
        "input_name",
        "precision",
        "io_dtype",
        "maedet_version",
        "color_order",
        "pixel_scale",
        "weights",
        "weights_sha256",
        "int8_calibration",
        "int8_mode",
        "task",
        "input_dtype",
    }
)
# How a consumer turns an image into the input: RGB pixels × PIXEL_SCALE, minus mean, divided by std (per channel).
COLOR_ORDER = "RGB"
PIXEL_SCALE = "1/255"


def build_metadata(
    *,
    model_name: str,
    output_names: Sequence[str],
    input_name: str,
    input_size: tuple[int, int, int],
    batch: int,
    dynamic: bool,
    mean: Sequence[float],
    std: Sequence[float],
    precision: str,
    io_dtype: str,
    opset: int,
    weights: tuple[str, str | None] = ("random", None),
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of every exported file, whatever kind of model it holds, as plain Python values (what
    ``read_metadata`` returns after a round trip); ``extras`` are the kind's own keys (and may refine these).

    ``weights`` says what the file computes with: (``random``, a timm pretrained tag, a checkpoint path or a
    folder; and, when known, the sha256 of its content).
    """
    from maedet import __version__

    meta: dict[str, Any] = {
        "model_name": model_name,
        "output_names": list(output_names),
        "input_name": input_name,
        "input_size": list(input_size),
        "batch": batch,
        "dynamic": dynamic,
        "color_order": COLOR_ORDER,
        "pixel_scale": PIXEL_SCALE,
        "mean": list(mean),
        "std": list(std),
        "precision": precision,
        "io_dtype": io_dtype,
        "opset": opset,
        "maedet_version": __version__,
        "weights": weights[0],
    }
    if weights[1] is not None:
        meta["weights_sha256"] = weights[1]
    meta.update(extras or {})
    return meta


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_identity(model: Any, checkpoint: str | os.PathLike[str] | None) -> tuple[str, str | None]:
    """What a backbone or detector file computes with: (``weights``, ``weights_sha256`` or None).

    A checkpoint file or folder by path and content; a converted folder (``local-dir:``, ``hf-hub:`` or a plain
    path) named as the model brings its own weights; a bare name is ``random``; a module is the caller's.
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        return str(path), file_sha256(path) if path.is_file() else _folder_sha256(path)
    if not isinstance(model, str):
        return "given module (built by the caller)", None
    from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX

    if model.startswith(HUB_PREFIX):
        return model, None
    folder = Path(model.removeprefix(LOCAL_PREFIX))
    if not (model.startswith(LOCAL_PREFIX) or folder.is_dir()):
        return "random", None
    return model, _folder_sha256(folder)


def _folder_sha256(folder: Path) -> str | None:
    """The sha256 of a converted folder's weights file (the one timm or create_detector loads), if it has one."""
    from maedet.zoo.checkpoint import FOLDER_WEIGHT_FILES

    found = next((folder / n for n in FOLDER_WEIGHT_FILES if (folder / n).is_file()), None)
    return file_sha256(found) if found is not None else None


def encode_value(value: Any) -> str:
    """Text as it is; anything else as JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def decode_value(key: str, text: str) -> Any:
    """The value ``encode_value`` stored: TEXT_KEYS stay text, other keys are JSON (or text that is not JSON).

    Older files stored text JSON-quoted (``"fp16"``); such a value reads back as the text inside the quotes.
    """
    if text.startswith('"'):
        try:
            quoted = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return text
        return quoted if isinstance(quoted, str) else text
    if key in TEXT_KEYS:
        return text
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deeply to be ours: the text
        return text


def apply_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Replace our keys in ``model.metadata_props`` (other producers' keys are kept)."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for prop in keep:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=encode_value(value))
    model.producer_name = "maedet-export"
    model.producer_version = str(metadata.get("maedet_version", ""))


def read_metadata(source: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, Any]:
    """The metadata of an ONNX file (or loaded model), values decoded by :func:`decode_value`."""
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        path = Path(source)
        if not path.is_file():
            reason = "not a regular file" if path.exists() else "no such file"
            raise ExportError(f"cannot read {str(path)!r}: {reason}.")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except (DecodeError, OSError) as exc:  # protobuf's DecodeError for any non-ONNX file
            raise ExportError(f"{str(path)!r} is not a readable ONNX file ({type(exc).__name__}).") from None
    return {prop.key: decode_value(prop.key, prop.value) for prop in model.metadata_props}


def normalisation(metadata: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``mean`` and ``std`` an ONNX file says its input is normalised with, checked before use: one finite
    number per channel each, every std positive (a NaN mean or a zero std would make every output NaN or inf)."""
    mean, std = metadata.get("mean"), metadata.get("std")

    def numbers(value: Any) -> bool:
        return (
            isinstance(value, list)
            and 0 < len(value) <= 64
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        )

    if not numbers(mean) or not numbers(std) or len(mean) != len(std) or min(std) <= 0:
        raise ExportError(
            f"{where} has unusable normalisation metadata (mean {str(mean)[:60]}, std {str(std)[:60]}): each must "
            "list one finite number per channel, and every std must be positive."
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def format_metadata(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, value) rows for display; the structure is summarised as its block count (``--json`` shows all)."""
    rows = []
    for key, value in metadata.items():
        if key == "structure" and isinstance(value, Mapping):
            blocks = value.get("blocks", [])
            blocks = blocks if isinstance(blocks, list) else []
            text = f"{len(blocks)} blocks: " + " → ".join(
                f"{b.get('class', '?')}({b.get('out', '?')})" for b in blocks if isinstance(b, Mapping)
            )
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value)
        rows.append((key, text))
    return rows
