"""Checks of an export request that must fail in one sentence *before* any model is built or run (issue 12).

Each check answers for one kind of careless or hostile input that used to end in a traceback, or in a silently
wrong file: an opset the installed exporter cannot write, a class count below one (timm then returns pooled
features, which would be named ``logits``), a calibration request that cannot fit in memory or would run for days,
a calibration image that decompresses to gigabytes, and an input size whose activations cannot fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.images import MAX_IMAGE_PIXELS
from maedet.memory import MemoryEstimateError, check_fits, forward_peak_bytes, state_bytes

from .errors import ExportError

__all__ = [
    "EXPORT_MEMORY_FACTOR",
    "MAX_CALIB_BATCHES",
    "MAX_CALIB_PIXELS",
    "check_activation_memory",
    "check_calibration",
    "check_num_classes",
    "check_opset",
    "check_out_indices",
    "supported_opsets",
]

# Min/max calibration settles within a few hundred images; every batch is held in memory and run once.
MAX_CALIB_BATCHES = 1024
# 64 megapixels: an 8K×8K photo; larger files are refused unread (see maedet.images).
MAX_CALIB_PIXELS = MAX_IMAGE_PIXELS
# Measured (fp32 with the check, peak RSS rise at 512 and 1536 px): the whole export — the PyTorch reference run whose
# outputs are kept, the tracer's run, the serialized file and ONNX Runtime's check — grows by 3.5× (maedet_s) and
# 2.3× (resnet18) the eager forward's activation estimate per extra pixel; weights add a fixed ~0.3-0.5 GB.
EXPORT_MEMORY_FACTOR = 4.0
# Besides the module's own weights (already in memory), the serialized ONNX file and ONNX Runtime's session each
# hold a copy of them while the export checks its file (assumed from the pipeline's steps, not measured).
EXPORT_WEIGHT_COPIES = 2


def supported_opsets() -> tuple[int, int]:
    """The opsets the installed TorchScript exporter and onnx package can both write (inclusive range)."""
    import onnx
    import torch.onnx

    constants = getattr(torch.onnx, "_constants", None)
    low = int(getattr(constants, "ONNX_MIN_OPSET", 7))
    high = int(getattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 17))
    return low, min(high, int(onnx.defs.onnx_opset_version()))


def check_opset(opset: int, minimum: int = 0) -> None:
    """One rule for every kind of model: what the installed exporter writes (from ``minimum`` up, for a kind whose
    graph needs newer operators)."""
    low, high = supported_opsets()
    low = max(low, minimum)
    if not low <= opset <= high:
        raise ExportError(
            f"opset {opset} is outside what the installed exporter writes ({low}..{high}; 17 or newer advised)."
        )


def check_num_classes(num_classes: int | None) -> None:
    """``num_classes`` 0 or less makes timm drop the classifier: the 'logits' would be pooled features."""
    if num_classes is not None and num_classes < 1:
        raise ExportError(
            f"--num-classes must be at least 1, got {num_classes} (with none, timm drops the classifier "
            "and the 'logits' would be pooled features)."
        )


def check_calibration(calib: str | os.PathLike[str] | None, batches: int | None, batch: int) -> None:
    """A bounded number of batches, and calibration images that are readable and not decompression bombs.

    ``batches`` None: as many as calibration reads by default (DEFAULT_CALIB_IMAGES images).
    """
    if batches is None:
        from .precision import DEFAULT_CALIB_IMAGES

        batches = -(-DEFAULT_CALIB_IMAGES // max(batch, 1))
    if not 1 <= batches <= MAX_CALIB_BATCHES:
        raise ExportError(
            f"--calib-batches must be between 1 and {MAX_CALIB_BATCHES} (every batch is held in memory and run "
            f"once; min/max scales settle within a few hundred images), got {batches}."
        )
    if calib is None:
        return
    from .precision import IMAGE_SUFFIXES

    root = Path(calib)
    if not root.is_dir():
        raise ExportError(f"calibration folder {str(root)!r} does not exist or is not a folder.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for path in files[: batches * batch]:
        _check_image_header(path)


def _check_image_header(path: Path) -> None:
    """Read only the image header: its pixel count must stay under MAX_CALIB_PIXELS."""
    from maedet.images import image_size

    try:
        image_size(path, "calibration image")
    except MaeDetError as exc:
        raise ExportError(str(exc)) from None


def check_activation_memory(
    module: nn.Module,
    input_shape: Sequence[int],
    what: str,
    factor: float = EXPORT_MEMORY_FACTOR,
    call: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    """Refuse, before running, an input size whose estimated peak memory exceeds what this process can get.

    Returns the estimate in bytes. The estimate is one eager forward on meta tensors (see
    :func:`maedet.memory.forward_peak_bytes`) times ``factor`` for the runs the caller makes.
    """
    needed = int(forward_peak_bytes(module, tuple(int(v) for v in input_shape), call) * factor)
    needed += EXPORT_WEIGHT_COPIES * state_bytes(module)
    try:
        check_fits(needed, what)
    except MemoryEstimateError as exc:
        raise ExportError(str(exc)) from None
    return needed


def check_out_indices(model: Any, structure: Any, out_indices: Sequence[int] | None) -> None:
    """Every index must name one of the model's feature levels (timm fails with an IndexError deep inside).

    The model's levels are read from a features model built on the meta device: no weights, no memory.
    """
    if out_indices is None or not isinstance(model, str):
        return
    import timm
    import torch

    from .model_source import _reference, create_model

    ref, parsed = _reference(model, structure)
    name = ref.text
    if not timm.is_model(ref.architecture):
        return  # resolve_model says so in its own sentence
    kwargs = {"structure": parsed} if parsed is not None and ref.folder is None else {}
    with torch.device("meta"):
        probe = create_model(ref, features_only=True, **kwargs)
    levels = len(probe.feature_info)
    wrong = [i for i in out_indices if not -levels <= i < levels]
    if wrong:
        raise ExportError(
            f"--out-indices {' '.join(map(str, wrong))} out of range: {name!r} has {levels} feature levels "
            f"(0..{levels - 1}, strides {list(probe.feature_info.reduction())})."
        )
