"""The formats of the AP-per-format table: one small registry, one entry per row.

A :class:`Format` says three things, each a function of the run (:class:`FormatJob`):

* ``make``: the file, written through the one export pipeline (:func:`maedet.export.export_onnx`) into the bench's
  cache (:meth:`ArtifactCache.exported`), or None for the PyTorch model itself;
* ``load``: a :class:`maedet.detect.Backend` over it, which :func:`maedet.detect.evaluate` scores (the code
  ``maedet-eval`` runs);
* ``timer``: a bench runner over it (:mod:`maedet.bench.runners`), timed with the bench's rules.

``backend`` names the bench backend (:data:`maedet.bench.BACKENDS`) that runs it: when that backend cannot run on
this machine the row is reported as skipped with its reason. ``usable`` may refuse a format that runs but would
measure nothing useful (ONNX Runtime's CPU provider "runs" an fp16 file by casting it back to fp32).

Adding a runtime is one entry: e.g. OpenVINO's rows, once ``ov-cpu`` is a bench backend and the pipeline writes IR::

    FORMATS["ov-fp32"] = Format("ov-fp32", "ov-cpu", "fp32", make=onnx_file, load=ov_backend, timer=file_timer)
    FORMATS["ov-int8"] = Format("ov-int8", "ov-cpu", "int8", make=onnx_file, load=ov_backend, timer=file_timer,
                                int8_mode="portable", speedup_over="ov-fp32")
"""

from __future__ import annotations

import collections
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maedet.detect import Backend as DetectBackend
from maedet.detect import OnnxBackend, TorchBackend
from maedet.export import ExportRequest
from maedet.runtime import ort_providers, ort_session, run_session
from maedet.zoo import GFocalV2

from .backends import BACKENDS
from .cache import ONNX_OPSET, ArtifactCache
from .detectors import Predict
from .runners import Runner, TorchRunner, file_runner

__all__ = ["FORMATS", "REFERENCE_FORMAT", "Format", "FormatJob", "file_timer", "onnx_file", "resolve_formats"]

REFERENCE_FORMAT = "pytorch-fp32"


@dataclass
class FormatJob:
    """What every format of one run shares: the detector, its weights' identity, the input size, the cache."""

    model: str  # the detector reference the exporter takes ('local-dir:FOLDER', or a name with ``checkpoint``)
    checkpoint: str | None
    detector: GFocalV2  # PyTorch fp32 in deploy form (BN folded): what the PyTorch row scores and times
    label: str  # readable start of the cached files' names
    weights_digest: str  # the weights' SHA-256: a retrained detector gets new files
    input_hw: tuple[int, int]  # the one static input every format is exported for, scored and timed at
    calib: str  # the folder of calibration images for INT8
    calib_identity: str  # the calibration images' names, sizes and times, hashed
    cache: ArtifactCache
    threads: int


Maker = Callable[[FormatJob, "Format"], "Path | None"]
Loader = Callable[[FormatJob, "Format", "Path | None"], DetectBackend]
Timer = Callable[[FormatJob, "Format", "Path | None", np.ndarray], Runner]
Check = Callable[[FormatJob, "Format", "Path | None"], "str | None"]


@dataclass(frozen=True)
class Format:
    """One row of the table (see the module docstring)."""

    name: str
    backend: str  # the bench backend that runs and times it (its availability decides)
    precision: str  # what the row computes in: fp32, fp16 or int8
    make: Maker
    load: Loader
    timer: Timer
    int8_mode: str | None = None  # the exporter's INT8 layout
    file_precision: str | None = None  # the exported file's precision when it differs (the TensorRT EP's fp16)
    speedup_over: str | None = None  # the fp32 format of the same runtime
    usable: Check | None = None


# ------------------------------------------------------------------------------------------- files
def onnx_file(job: FormatJob, fmt: Format) -> Path:
    """The static batch-1 detector file (NMS inside) at the job's input size, through the export pipeline."""
    precision = fmt.file_precision or fmt.precision
    int8 = precision == "int8"
    request = ExportRequest(
        checkpoint=job.checkpoint,
        input_size=job.input_hw,
        precision=precision,
        opset=ONNX_OPSET,
        check=False,  # the table is the check: AP on the user's data
        calib=job.calib if int8 else None,
        int8_mode=fmt.int8_mode or "portable",
    )
    identity = {"weights": job.weights_digest, "calibration": job.calib_identity if int8 else None}
    stem = f"{job.label}-{precision}{fmt.int8_mode or ''}-{job.input_hw[0]}x{job.input_hw[1]}"
    return job.cache.exported(stem, job.model, request, identity)


def no_file(job: FormatJob, fmt: Format) -> None:
    return None


# ------------------------------------------------------------------------------------------- detect backends
def torch_backend(job: FormatJob, fmt: Format, path: Path | None) -> DetectBackend:
    backend = TorchBackend(job.detector)
    backend.fixed_hw = job.input_hw  # the same letterboxed input the static files take
    return backend


def ort_backend(job: FormatJob, fmt: Format, path: Path | None) -> DetectBackend:
    bench = BACKENDS[fmt.backend]
    providers = ort_providers(
        bench.provider or "CPUExecutionProvider", fp16=bench.precision == "fp16", cache_dir=job.cache.root / "ort-trt"
    )
    return OnnxBackend(path, providers=providers)  # type: ignore[arg-type]


def engine_backend(job: FormatJob, fmt: Format, path: Path | None) -> DetectBackend:
    from maedet.detect.engine_backend import EngineBackend

    return EngineBackend(job.cache.engine(path, fmt.precision), path)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- timers
def torch_timer(job: FormatJob, fmt: Format, path: Path | None, data: np.ndarray) -> Runner:
    return TorchRunner(Predict(job.detector).eval(), BACKENDS[fmt.backend], data)


def file_timer(job: FormatJob, fmt: Format, path: Path | None, data: np.ndarray) -> Runner:
    return file_runner(BACKENDS[fmt.backend], path, data, job.threads, job.cache)


# ------------------------------------------------------------------------------------------- checks
def cpu_fp16_reason(job: FormatJob, fmt: Format, path: Path | None) -> str | None:
    """Why ONNX Runtime's CPU provider cannot run the fp16 file usefully, or None when it computes in fp16.

    Checked, not assumed: one run under ONNX Runtime's profiler shows which input type each convolution kernel
    really took. Where the provider has no fp16 convolution it inserts casts and convolves in fp32.
    """
    h, w = job.input_hw
    with tempfile.TemporaryDirectory(prefix="maedet-fp16-") as tmp:
        session = ort_session(path, threads=job.threads, profile_prefix=Path(tmp) / "profile", what=str(path))
        run_session(session, np.zeros((1, 3, h, w), np.float32))
        events = json.loads(Path(session.end_profiling()).read_text())
    types = collections.Counter(
        next(iter(e["args"]["input_type_shape"][0]), "?")
        for e in events
        if e.get("cat") == "Node" and e["args"].get("op_name") in ("Conv", "FusedConv")
    )
    if types.get("float16"):
        return None
    return (
        f"ONNX Runtime's CPU provider has no fp16 convolution here: it casts the fp16 file back to fp32 "
        f"({sum(types.values())} convolutions ran in {', '.join(types) or 'no'} precision), so the row would time "
        "fp32 arithmetic plus casts, not an fp16 deployment"
    )


# ------------------------------------------------------------------------------------------- the registry
def _onnx(name: str, backend: str, precision: str, **kwargs: Any) -> Format:
    return Format(name, backend, precision, make=onnx_file, load=ort_backend, timer=file_timer, **kwargs)


def _engine(name: str, backend: str, precision: str, **kwargs: Any) -> Format:
    return Format(name, backend, precision, make=onnx_file, load=engine_backend, timer=file_timer, **kwargs)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(REFERENCE_FORMAT, "torch-eager", "fp32", make=no_file, load=torch_backend, timer=torch_timer),
        _onnx("ort-fp32", "ort-cpu", "fp32"),
        _onnx("ort-fp16", "ort-cpu", "fp16", speedup_over="ort-fp32", usable=cpu_fp16_reason),
        _onnx("ort-int8-portable", "ort-cpu-int8", "int8", int8_mode="portable", speedup_over="ort-fp32"),
        _onnx("ort-int8-cpu", "ort-cpu-int8", "int8", int8_mode="cpu", speedup_over="ort-fp32"),
        _onnx("ort-cuda-fp32", "ort-cuda", "fp32"),
        _onnx("ort-cuda-fp16", "ort-cuda-fp16", "fp16", speedup_over="ort-cuda-fp32"),
        _onnx("ort-trt-fp32", "ort-trt", "fp32"),
        _onnx("ort-trt-fp16", "ort-trt-fp16", "fp16", file_precision="fp32", speedup_over="ort-trt-fp32"),
        _engine("trt-fp32", "trt", "fp32"),
        _engine("trt-fp16", "trt-fp16", "fp16", speedup_over="trt-fp32"),  # TensorRT takes precision from the graph
        _engine("trt-int8", "trt-int8", "int8", int8_mode="portable", speedup_over="trt-fp32"),
    )
}


def resolve_formats(names: str | None) -> list[Format]:
    """Formats from a comma list (None: all of them); the PyTorch fp32 reference is always first."""
    from .errors import BenchError

    wanted = [n.strip() for n in (names or ",".join(FORMATS)).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in FORMATS]
    if unknown:
        raise BenchError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}.")
    return [FORMATS[n] for n in dict.fromkeys([REFERENCE_FORMAT, *wanted])]
