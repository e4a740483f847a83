"""Reading a detector export's metadata back, checked: the one reader for maedet-detect, maedet-eval and the engine
check.

A detector file carries what running it needs (``task``, ``outputs``, ``num_classes``, ``mean``/``std``,
``strides``, the ``postprocess`` settings; see :func:`maedet.export.detector_onnx.detector_metadata`). Metadata is
plain text anyone can edit: a value that is missing, of the wrong type or out of range must be one sentence here,
not a ``KeyError`` or ``TypeError`` in the middle of a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from .errors import ExportError
from .metadata import read_metadata

__all__ = ["check_detector_metadata", "read_detector_metadata"]

_POSTPROCESS_TYPES = {"nms_pre": int, "score_thr": float, "iou_thr": float, "max_per_img": int}


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, count: int, valid: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and len(value) == count and all(valid(v) for v in value)


# key → (check, what it must be); each is needed by some consumer of the file.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "outputs": (lambda v: v in ("detections", "raw"), "'detections' or 'raw'"),
    "num_classes": (_is_int, "a whole number of at least 1"),
    "mean": (lambda v: _numbers(v, 3, _is_finite), "a list of 3 finite numbers"),
    "std": (lambda v: _numbers(v, 3, lambda s: _is_finite(s) and s > 0), "a list of 3 finite numbers above 0"),
    "strides": (lambda v: isinstance(v, list) and bool(v) and all(_is_int(s) for s in v), "a list of strides"),
    "input_size": (lambda v: _numbers(v, 3, _is_int), "[channels, height, width]"),
    "input_dtype": (lambda v: v in ("uint8", "float32"), "'uint8' or 'float32'"),
    "postprocess": (
        lambda v: (
            isinstance(v, dict)
            and set(v) == set(_POSTPROCESS_TYPES)
            and all(_is_int(v[k]) if t is int else _is_finite(v[k]) for k, t in _POSTPROCESS_TYPES.items())
        ),
        f"an object of {', '.join(_POSTPROCESS_TYPES)} (numbers)",
    ),
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_detector_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a detector export, every value its consumers use checked; else one sentence."""
    return check_detector_metadata(read_metadata(path), path)


def check_detector_metadata(meta: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta`` (of the ONNX file or OpenVINO IR at ``path``) when every value a consumer uses is usable; else one
    sentence."""
    from maedet.zoo.gfl_postprocess import PostprocessConfig

    if meta.get("task") != "detection":
        raise ExportError(f"{str(path)!r} is not a detector export; write one with maedet-export NAME_gfl --onnx.")
    for key, (valid, kind) in _RULES.items():
        if key not in meta:
            problem = f"it has no {key!r}"
        elif not valid(meta[key]):
            problem = f"its {key} is {_short(meta[key])}, not {kind}"
        else:
            continue
        raise ExportError(
            f"{str(path)!r} has unusable detector metadata: {problem}; export the detector again "
            "(maedet-export NAME_gfl --onnx FILE)."
        )
    try:
        PostprocessConfig(**meta["postprocess"])
    except ExportError:
        raise
    except ValueError as exc:  # MaeDetError: a value out of range
        raise ExportError(f"{str(path)!r} has unusable detector metadata: postprocess {exc}") from None
    return meta
