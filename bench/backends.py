"""The backends a model can be measured on, and which of them this machine can run (with the reason if not).

A backend fixes the runtime, the device and the precision, so rows are comparable within a backend and the
speedups against ResNet-50/101 are always taken on the same backend. Nothing is silently dropped: every backend
asked for that cannot run here is reported as skipped, with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from .errors import BenchError

__all__ = [
    "BACKENDS",
    "CPU_DEFAULT",
    "GPU_BACKENDS",
    "Backend",
    "BackendStatus",
    "detect_backends",
    "resolve_backends",
    "unavailable_reason",
    "unavailable_reason_and_hint",
]


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # 'torch', 'onnxruntime', 'openvino' or 'tensorrt'
    device: str  # 'cpu' or 'cuda'
    precision: str  # 'fp32', 'fp16' or 'int8'
    description: str
    channels_last: bool = False
    compile: bool = False
    provider: str | None = None  # ONNX Runtime execution provider
    int8_source: str | None = None  # OpenVINO INT8: 'nncf' (post-training quantization) or the exporter's 'qdq' file
    in_cpu_all: bool = True  # False: a comparison row, left out of cpu-all (run when named, or with all)

    @property
    def memory_kind(self) -> str:
        if self.device == "cpu":
            return "cpu-rss-rise"
        return "cuda-max-allocated" if self.runtime == "torch" else "cuda-used-rise"


def _b(*args: str, **kwargs: object) -> Backend:
    return Backend(*args, **kwargs)  # type: ignore[arg-type]


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        _b("torch-eager", "torch", "cpu", "fp32", "PyTorch eager, CPU"),
        _b("torch-eager-cl", "torch", "cpu", "fp32", "PyTorch eager, CPU, channels-last", channels_last=True),
        _b("torch-compile", "torch", "cpu", "fp32", "PyTorch torch.compile (inductor), CPU", compile=True),
        _b("ort-cpu", "onnxruntime", "cpu", "fp32", "ONNX Runtime CPU", provider="CPUExecutionProvider"),
        _b(
            "ort-cpu-int8", "onnxruntime", "cpu", "int8", "ONNX Runtime CPU, INT8 Q/DQ", provider="CPUExecutionProvider"
        ),
        _b("ov-cpu", "openvino", "cpu", "fp32", "OpenVINO CPU"),
        # The exporter's Q/DQ file (the CPU layout, ort-cpu-int8's file): as fast as NNCF's model or faster, at the
        # same AP on a trained detector (docs/cli.md, 'OpenVINO'); NNCF's is the comparison row.
        _b("ov-cpu-int8", "openvino", "cpu", "int8", "OpenVINO CPU, INT8 Q/DQ", int8_source="qdq"),
        _b(
            "ov-cpu-int8-nncf",
            "openvino",
            "cpu",
            "int8",
            "OpenVINO CPU, INT8 by NNCF",
            int8_source="nncf",
            in_cpu_all=False,
        ),
        _b("torch-cuda", "torch", "cuda", "fp32", "PyTorch eager, CUDA"),
        _b("torch-cuda-fp16", "torch", "cuda", "fp16", "PyTorch eager, CUDA, half"),
        _b("torch-cuda-cl", "torch", "cuda", "fp32", "PyTorch eager, CUDA, channels-last", channels_last=True),
        _b(
            "torch-cuda-cl-fp16",
            "torch",
            "cuda",
            "fp16",
            "PyTorch eager, CUDA, channels-last, half",
            channels_last=True,
        ),
        _b("torch-cuda-compile-fp16", "torch", "cuda", "fp16", "PyTorch torch.compile, CUDA, half", compile=True),
        _b("ort-cuda", "onnxruntime", "cuda", "fp32", "ONNX Runtime CUDA EP", provider="CUDAExecutionProvider"),
        _b(
            "ort-cuda-fp16",
            "onnxruntime",
            "cuda",
            "fp16",
            "ONNX Runtime CUDA EP, fp16 graph",
            provider="CUDAExecutionProvider",
        ),
        _b("ort-trt", "onnxruntime", "cuda", "fp32", "ONNX Runtime TensorRT EP", provider="TensorrtExecutionProvider"),
        _b(
            "ort-trt-fp16",
            "onnxruntime",
            "cuda",
            "fp16",
            "ONNX Runtime TensorRT EP, fp16",
            provider="TensorrtExecutionProvider",
        ),
        _b("trt", "tensorrt", "cuda", "fp32", "TensorRT engine"),
        _b("trt-fp16", "tensorrt", "cuda", "fp16", "TensorRT engine, fp16"),
        _b("trt-int8", "tensorrt", "cuda", "int8", "TensorRT engine, INT8 Q/DQ"),
    )
}

# The default CPU pair: measured to fit the default run's 5-minute budget on 2 cores (INT8 and compile are opt-in).
CPU_DEFAULT = ("torch-eager", "ort-cpu")
GPU_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.device == "cuda")
# Added to the defaults on a machine that can run them.
GPU_DEFAULT = ("torch-cuda", "torch-cuda-fp16", "torch-cuda-cl-fp16", "ort-cuda", "ort-trt-fp16", "trt-fp16")
_ALIASES = {
    "cpu": CPU_DEFAULT,
    "cpu-all": tuple(name for name, b in BACKENDS.items() if b.device == "cpu" and b.in_cpu_all),
    "gpu": GPU_BACKENDS,
    "all": tuple(BACKENDS),
}


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@cache
def _cuda_reason() -> str | None:
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"PyTorch {torch.__version__} is a CPU-only build (no CUDA support)"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    return None


@cache
def _ort_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


ORT_GPU_SWAP = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
GPU_EXTRA = "pip install 'maedet[gpu]'"


def _ort_gpu_hint() -> str:
    """onnxruntime and onnxruntime-gpu install the same module, so the GPU build must be the only one present."""
    installed = set()
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            installed.add(dist)
        except metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        return f"onnxruntime and onnxruntime-gpu are both installed and overwrite each other: {ORT_GPU_SWAP}"
    return f"the CUDA and TensorRT providers come with onnxruntime-gpu instead of onnxruntime: {ORT_GPU_SWAP}"


def _compiler_reason() -> str | None:
    if os.environ.get("CXX") and shutil.which(os.environ["CXX"]):
        return None
    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return None
    return "torch.compile on CPU needs a C++ compiler (g++ or clang++), and none is on PATH"


def _ort_gap(backend: Backend) -> tuple[str | None, str | None]:
    import onnxruntime as ort

    if backend.precision == "int8" and not _has_module("onnxruntime.quantization"):
        return "onnxruntime.quantization is missing (needed to make the INT8 model)", None
    if backend.provider not in _ort_providers():
        hint = _ort_gpu_hint() if backend.device == "cuda" else None
        return f"onnxruntime {ort.__version__} has no {backend.provider}", hint
    return None, None


def _openvino_gap(backend: Backend) -> tuple[str | None, str | None]:
    """OpenVINO runs the exported ONNX file; NNCF makes the INT8 model of the 'nncf' rows."""
    from maedet.openvino_runtime import OV_INSTALL_HINT

    if not _has_module("openvino"):
        return "OpenVINO is not installed", OV_INSTALL_HINT
    if backend.int8_source == "nncf" and not _has_module("nncf"):
        return "NNCF, which makes the INT8 model, is not installed", OV_INSTALL_HINT
    return None, None


def unavailable_reason_and_hint(backend: Backend) -> tuple[str | None, str | None]:
    """(why ``backend`` cannot run here, how to fix it) — (None, None) when it can; the hint may be None.

    Several backends share one fix (every ONNX Runtime GPU backend needs onnxruntime-gpu), so listings show each
    hint once; :func:`unavailable_reason` joins the two for a single backend.
    """
    if backend.runtime in ("onnxruntime", "tensorrt", "openvino") and not _has_module("onnxruntime"):
        return "onnxruntime is not installed", None
    if backend.runtime == "openvino":
        return _openvino_gap(backend)
    if backend.runtime == "onnxruntime":
        reason, hint = _ort_gap(backend)
        if reason:
            return reason, hint
    if backend.device == "cuda":
        if backend.runtime == "tensorrt" and not _has_module("tensorrt"):
            return "TensorRT is not installed", f"{GPU_EXTRA} on a CUDA machine"
        if backend.runtime == "tensorrt" and not _has_module("polygraphy"):
            return "Polygraphy, which runs the TensorRT engines, is not installed", GPU_EXTRA
        if backend.runtime in ("torch", "tensorrt"):  # torch allocates TensorRT's buffers too
            reason = _cuda_reason()
            if reason:
                return reason, None
    if backend.compile and backend.device == "cpu":
        return _compiler_reason(), None
    return None, None


def unavailable_reason(backend: Backend) -> str | None:
    """None when ``backend`` can run here, else one sentence saying why not (and how to fix it, when we know)."""
    reason, hint = unavailable_reason_and_hint(backend)
    if reason is None:
        return None
    return f"{reason} ({hint})" if hint else reason


@dataclass(frozen=True)
class BackendStatus:
    backend: Backend
    reason: str | None  # None: available

    @property
    def available(self) -> bool:
        return self.reason is None


def resolve_backends(spec: str | None) -> list[str]:
    """Backend names from a comma list (names or aliases cpu, cpu-all, gpu, all); None/'auto' = the defaults.

    The defaults are the CPU pair plus the usual GPU set; on a machine without a GPU those GPU backends are
    reported as skipped with the reason, so a reader sees what was not measured and why.
    """
    if spec is None or spec.strip() in ("", "auto"):
        return [*CPU_DEFAULT, *GPU_DEFAULT]
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        for name in _ALIASES.get(part, (part,)):
            if name not in BACKENDS:
                raise BenchError(
                    f"unknown backend {name!r}; choose from {', '.join(BACKENDS)} (or cpu, cpu-all, gpu, all)."
                )
            if name not in names:
                names.append(name)
    if not names:
        raise BenchError("no backend was named.")
    return names


def detect_backends(names: list[str] | None = None) -> list[BackendStatus]:
    """Availability of the named backends (default: every known backend), in the given order."""
    return [BackendStatus(BACKENDS[n], unavailable_reason(BACKENDS[n])) for n in (names or list(BACKENDS))]
