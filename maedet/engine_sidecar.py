"""The JSON sidecar beside every TensorRT engine: which TensorRT and GPU built it, its profiles and ONNX metadata.

An engine only runs on the TensorRT version and GPU model that built it (docs/design.md, 'Export and runtimes'), so
loading compares the sidecar with this machine first and says in one sentence when the engine must be rebuilt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ExportError
from .fileio import atomic_write_text
from .jsonio import JsonError, read_json

__all__ = ["SIDECAR_FORMAT", "engine_mismatch_message", "read_sidecar", "sidecar_path", "write_sidecar"]

SIDECAR_FORMAT = "maedet-engine/1"


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    path = sidecar_path(engine)
    atomic_write_text(path, json.dumps({"format": SIDECAR_FORMAT, **info}, indent=1, sort_keys=True) + "\n")
    return path


def read_sidecar(engine: str | os.PathLike[str]) -> dict[str, Any]:
    path = sidecar_path(engine)
    if not path.exists():
        raise ExportError(f"engine sidecar {str(path)!r} is missing; rebuild the engine with maedet-export --trt.")
    try:
        data = read_json(path, "engine sidecar", max_bytes=2**20)
    except JsonError as exc:
        raise ExportError(
            f"{str(exc).rstrip('.')}, so it cannot be read; rebuild the engine with maedet-export --trt."
        ) from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ExportError(f"{str(path)!r} is not a maedet engine sidecar (format {SIDECAR_FORMAT}).")
    return data


def engine_mismatch_message(
    sidecar: Mapping[str, Any], tensorrt_version: str, gpu_name: str | None, compute_capability: str | None
) -> str | None:
    """One sentence when the engine was built by another TensorRT version or GPU model; None when it matches.

    Engines are tied to the exact TensorRT version and the GPU's compute capability (and, for tuned tactics,
    the GPU model), so any difference means: rebuild.
    """
    built_ver = str(sidecar.get("tensorrt_version", "?"))
    built_gpu = sidecar.get("gpu_name")
    built_cc = sidecar.get("compute_capability")
    problems = []
    if built_ver != tensorrt_version:
        problems.append(f"TensorRT {built_ver} (this machine has {tensorrt_version})")
    if built_cc and compute_capability and str(built_cc) != str(compute_capability):
        problems.append(f"compute capability {built_cc} (this GPU is {compute_capability})")
    elif built_gpu and gpu_name and built_gpu != gpu_name:
        problems.append(f"a {built_gpu} (this GPU is a {gpu_name})")
    if not problems:
        return None
    return (
        f"this engine was built with {' on '.join(problems)}; engines only run where they were built, "
        "so rebuild it here with maedet-export --trt."
    )
