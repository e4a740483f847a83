"""What an exported file says about itself: stored as ONNX ``metadata_props`` (string → JSON string).

A consumer (the bench, a detector, ``maedet-export --info``) can preprocess and interpret the outputs from the
file alone: the input size, mean/std, output names with their strides, the precision and the structure.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from .errors import ExportError

__all__ = ["METADATA_KEYS", "apply_metadata", "build_metadata", "format_metadata", "read_metadata"]

# Every key export writes; values are JSON so numbers and lists survive the round trip exactly.
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
)


def build_metadata(
    *,
    model_name: str,
    structure_json: dict[str, Any] | None,
    outputs: str,
    output_names: tuple[str, ...],
    output_strides: tuple[int, ...],
    input_name: str,
    input_size: tuple[int, int, int],
    batch: int,
    dynamic: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    precision: str,
    io_dtype: str,
    opset: int,
) -> dict[str, Any]:
    """The metadata as plain Python values (what ``read_metadata`` returns after a round trip)."""
    from maedet import __version__

    return {
        "model_name": model_name,
        "structure": structure_json,
        "outputs": outputs,
        "output_names": list(output_names),
        "output_strides": list(output_strides),
        "input_name": input_name,
        "input_size": list(input_size),
        "batch": batch,
        "dynamic": dynamic,
        "mean": list(mean),
        "std": list(std),
        "precision": precision,
        "io_dtype": io_dtype,
        "opset": opset,
        "maedet_version": __version__,
    }


def apply_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Replace our keys in ``model.metadata_props`` (other producers' keys are kept)."""
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    for prop in keep:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    model.producer_name = "maedet-export"
    model.producer_version = str(metadata.get("maedet_version", ""))


def read_metadata(source: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, Any]:
    """The metadata of an ONNX file (or loaded model); values that are not JSON are returned as text."""
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
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except (json.JSONDecodeError, RecursionError):  # not JSON, or nested too deeply to be ours: the text
            out[prop.key] = prop.value
    return out


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
