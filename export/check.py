"""Proof that an exported file computes what PyTorch computes, and that an engine computes what its ONNX file does.

Errors are reported per output as max abs error, max relative error (max abs error divided by the reference's
largest magnitude: post-ReLU maps are mostly zeros, so elementwise relative error is meaningless) and cosine
similarity. An output holding inf or NaN fails without figures (``nonfinite`` counts them): in an fp16 file that
means activations beyond fp16's ±65504 (random weights can do that), which :meth:`CheckReport.failure` says in one
sentence. Tolerances (see TOLERANCES, and docs/design.md, 'Export and runtimes'): fp32 must match to 1e-4 of the
output's scale; fp16 and int8 are judged by cosine, since their error is spread over every element rather than
being a few outliers. Engines are compared with ONNX Runtime CPU on the ONNX file they were built from
(ENGINE_TOLERANCES).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from maedet.runtime import ort_session, run_session

from .errors import ExportError

__all__ = [
    "ENGINE_TOLERANCES",
    "RUNTIMES",
    "TOLERANCES",
    "CheckReport",
    "OutputCheck",
    "Tolerance",
    "check_against_torch",
    "compare_outputs",
    "run_file",
    "run_torch",
    "synthetic_images",
    "to_pixels",
]


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria: an output passes when every given bound holds."""

    max_rel: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_rel is not None:
            parts.append(f"max rel ≤ {self.max_rel:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine ≥ {self.min_cosine:g}")
        return " and ".join(parts) or "none"


# fp32: the bound (measured ~2e-6). fp16: measured max rel ~1e-3 and cosine > 0.99999 on MAE-DET-M
# (10-bit mantissa through ~90 convs); 0.9995 leaves room for larger inputs. int8: measured cosine 0.994-0.996
# (portable) and 0.9988-0.9995 (cpu mode) on MAE-DET-M at 640×640 with synthetic calibration; 0.95 flags a broken
# quantization (wrong scales give < 0.9) without failing on calibration noise.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4),
    "fp16": Tolerance(max_rel=2e-2, min_cosine=0.9995),
    "int8": Tolerance(min_cosine=0.95),
}
# A TensorRT fp32 engine may use TF32 tensor cores; fp16/int8 engines are compared with the same-precision ONNX.
ENGINE_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-2, min_cosine=0.9999),
    "fp16": TOLERANCES["fp16"],
    "int8": TOLERANCES["int8"],
}


FP16_MAX = 65504.0
# The runtimes an exported file is checked in: the ONNX file in ONNX Runtime, the IR (--openvino) in OpenVINO.
RUNTIMES = {"onnxruntime": "ONNX Runtime CPU", "openvino": "OpenVINO CPU"}


def run_file(
    model: bytes | str | os.PathLike[str],
    inputs: np.ndarray | Mapping[str, np.ndarray],
    what: str,
    runtime: str = "onnxruntime",
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Run an ONNX model once on CPU in ``runtime`` (see RUNTIMES); {output name: array} in the file's order."""
    if runtime == "openvino":
        from maedet.openvino_runtime import ov_compile, ov_run

        return ov_run(ov_compile(model, threads=threads, what=what), inputs)
    return run_session(ort_session(model, threads=threads, what=what), inputs)


@dataclass
class OutputCheck:
    name: str
    shape: tuple[int, ...]
    max_abs: float  # inf, and cosine NaN, when the file's output holds inf/NaN (no meaningful figure)
    max_rel: float
    cosine: float
    passed: bool
    nonfinite: int = 0  # inf/NaN elements in the exported file's output


@dataclass
class CheckReport:
    """Per-output figures of one comparison, and whether all passed the precision's tolerance."""

    precision: str
    tolerance: str
    input_shape: tuple[int, ...]
    providers: list[str]
    outputs: dict[str, OutputCheck] = field(default_factory=dict)
    detections: Any = None  # a DetectionComparison, for files that end in detections (NMS in the graph)

    @property
    def passed(self) -> bool:
        detections_ok = self.detections is None or self.detections.passed
        return detections_ok and all(o.passed for o in self.outputs.values())

    def __getitem__(self, name: str) -> OutputCheck:
        return self.outputs[name]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: inf/NaN figures become None (strict JSON has neither)."""
        data = asdict(self)
        for out in data["outputs"].values():
            for key in ("max_abs", "max_rel", "cosine"):
                out[key] = out[key] if math.isfinite(out[key]) else None
        data["passed"] = self.passed
        if self.detections is not None:
            data["detections"]["passed"] = self.detections.passed
        return data

    def failure(self) -> str | None:
        """Why the check failed, as one sentence (None when it passed)."""
        if self.passed:
            return None
        if self.detections is not None and not self.detections.passed:
            return "the detections differ (count, labels or boxes beyond their tolerance)."
        broken = [o.name for o in self.outputs.values() if o.nonfinite]
        if broken and self.precision == "fp16":
            return (
                f"{', '.join(broken)} overflowed fp16 (inf/NaN in the file: activations beyond ±{FP16_MAX:g}); "
                "export trained weights (--checkpoint/--pretrained) or use fp32."
            )
        if broken:
            return f"{', '.join(broken)} hold inf/NaN in the exported {self.precision} file."
        return f"outside the {self.precision} tolerance ({self.tolerance})."


def synthetic_images(
    count: int, height: int, width: int, mean: Sequence[float], std: Sequence[float], seed: int = 0
) -> np.ndarray:
    """Image-like normalized batches: smooth random colour fields plus fine noise, in [0, 1] before mean/std.

    Smooth fields give the spatially correlated activations real photos give (pure white noise would not),
    so calibration ranges and parity figures are closer to what real inputs produce.
    """
    rng = np.random.default_rng(seed)
    chans = len(mean)
    coarse = torch.from_numpy(rng.random((count, chans, max(height // 16, 2), max(width // 16, 2)), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.from_numpy(rng.normal(0.0, 0.05, (count, chans, height, width)).astype(np.float32))
    pixels = (smooth + noise).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((pixels - m) / s).numpy()


def to_pixels(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float images → the uint8 RGB pixels they came from (the input of an ``embed_preprocess`` file)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.round((images * s + m) * 255.0), 0, 255).astype(np.uint8)


@torch.no_grad()
def run_torch(module: torch.nn.Module, images: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    outs = module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
    if isinstance(outs, torch.Tensor):
        outs = (outs,)
    return {n: o.float().numpy() for n, o in zip(names, outs, strict=True)}


def _output_check(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputCheck:
    r = np.asarray(ref, dtype=np.float64)
    a = np.asarray(got, dtype=np.float64)
    if r.shape != a.shape:
        raise ExportError(f"output {name!r} has shape {a.shape} in the file but {r.shape} in the reference.")
    nonfinite = int(a.size - np.count_nonzero(np.isfinite(a)))
    if nonfinite or not np.isfinite(r).all():  # no arithmetic on inf/NaN: no figures, and no numpy warnings
        return OutputCheck(name, tuple(r.shape), float("inf"), float("inf"), float("nan"), False, nonfinite)
    diff = np.abs(a - r)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    rf, af = r.ravel(), a.ravel()
    norms = float(np.linalg.norm(rf) * np.linalg.norm(af))
    cosine = float(rf @ af / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    ok = (tol.max_rel is None or max_rel <= tol.max_rel) and (tol.min_cosine is None or cosine >= tol.min_cosine)
    return OutputCheck(name, tuple(r.shape), max_abs, max_rel, cosine, bool(ok))


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    precision: str,
    *,
    input_shape: Sequence[int] = (),
    providers: Sequence[str] = (),
    tolerance: Tolerance | None = None,
) -> CheckReport:
    """Max abs error, max relative error (to the reference's scale) and cosine, per output."""
    tol = tolerance or TOLERANCES[precision]
    report = CheckReport(precision, tol.describe(), tuple(input_shape), list(providers))
    for name, ref in reference.items():
        if name not in actual:
            raise ExportError(f"output {name!r} is missing from the exported file.")
        report.outputs[name] = _output_check(name, ref, actual[name], tol)
    return report


def check_against_torch(
    onnx_model: bytes | str | os.PathLike[str],
    module: torch.nn.Module,
    images: torch.Tensor | np.ndarray,
    output_names: Sequence[str],
    precision: str,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
    reference: dict[str, np.ndarray] | None = None,
    runtime: str = "onnxruntime",
) -> CheckReport:
    """Run the ONNX model on CPU in ``runtime`` (ONNX Runtime, or OpenVINO for an IR made from it) and compare with
    the PyTorch module on the same images.

    ``reference`` (PyTorch's outputs for ``images``, if already computed) saves running the module again.
    """
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.float32)
    what = f"the exported {precision} model"
    if runtime == "onnxruntime":
        session = ort_session(onnx_model, threads=threads, what=what)
        got, providers = run_session(session, arr), session.get_providers()
    else:
        got, providers = run_file(onnx_model, arr, what, runtime, threads), [RUNTIMES[runtime]]
    ref = reference if reference is not None else run_torch(module, arr, output_names)
    return compare_outputs(ref, got, precision, input_shape=arr.shape, providers=providers, tolerance=tolerance)
