"""Ready-to-time runners: one model on one backend, with its input already on the device.

Each runner's ``__call__`` does one inference and returns only when the result exists (CUDA work is
synchronised), so a wall-clock timer around it measures what a caller would wait for. ONNX Runtime and TensorRT
runners are the exporter's runtime layer (:mod:`maedet.runtime`); PyTorch runs the same deploy module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from maedet.errors import ExportError
from maedet.export import ModelSource
from maedet.runtime import OrtRunner, ort_providers, ort_session

from .backends import Backend
from .cache import ArtifactCache
from .errors import BackendUnavailable
from .models import ModelSpec

__all__ = ["Runner", "TorchRunner", "file_runner", "make_input", "make_runner"]

# What run_bench times: a callable doing one inference, with close() to free what it holds.
Runner = Any


def make_input(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """The same normalised-image-like input for every model and backend."""
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


class TorchRunner:
    """PyTorch: the deploy module on the backend's device, dtype and memory format (optionally compiled)."""

    def __init__(self, module: Any, backend: Backend, data: np.ndarray) -> None:
        import torch

        self._torch = torch
        device = torch.device(backend.device)
        dtype = torch.float16 if backend.precision == "fp16" else torch.float32
        fmt = torch.channels_last if backend.channels_last else torch.contiguous_format
        if device.type != "cpu" or dtype != torch.float32 or backend.channels_last:
            module = copy.deepcopy(module)  # the shared CPU fp32 module stays as it is for the other backends
        try:
            self.module = module.to(device=device, dtype=dtype, memory_format=fmt).eval()
            self.x = torch.from_numpy(data).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        except torch.cuda.OutOfMemoryError:
            raise BackendUnavailable("PyTorch could not set up the model: CUDA out of memory") from None
        if backend.compile:
            self.module = torch.compile(self.module)
        self._cuda = device.type == "cuda"

    def __call__(self) -> None:
        with self._torch.inference_mode():
            self.module(self.x)
        if self._cuda:
            self._torch.cuda.synchronize()

    def close(self) -> None:
        del self.module, self.x
        if self._cuda:
            self._torch.cuda.empty_cache()


def _onnx_precision(backend: Backend) -> str:
    """Which exported graph a backend runs: the graph carries the precision, except for the TensorRT EP,
    which lowers an fp32 graph itself (trt_fp16_enable)."""
    if backend.provider == "TensorrtExecutionProvider":
        return "fp32"
    return backend.precision


def _int8_mode(backend: Backend) -> str | None:
    """The exporter's INT8 layout: ONNX Runtime CPU's fast uint8-activation layout, or the portable symmetric one
    TensorRT needs."""
    if backend.precision != "int8":
        return None
    return "cpu" if backend.device == "cpu" else "portable"


def _ort_runner(onnx_path: Any, backend: Backend, data: np.ndarray, threads: int, cache: ArtifactCache) -> OrtRunner:
    providers = ort_providers(
        backend.provider or "CPUExecutionProvider", fp16=backend.precision == "fp16", cache_dir=cache.root / "ort-trt"
    )
    try:
        session = ort_session(onnx_path, providers=providers, threads=threads, denormals_as_zero=True)
    except ExportError as exc:
        raise BackendUnavailable(str(exc)) from None
    return OrtRunner(session, data, device=backend.device)


def make_runner(
    backend: Backend,
    spec: ModelSpec,
    data: np.ndarray,
    threads: int,
    cache: ArtifactCache,
    deploy_source: Callable[[], ModelSource],
) -> Runner:
    """One runner; problems that only show when trying become BackendUnavailable (a skipped row).

    ``deploy_source`` returns the model's deploy form, built once and shared by every backend of a run.
    """
    if backend.runtime == "torch":
        return TorchRunner(deploy_source().module, backend, data)
    batch, _, h, w = data.shape
    onnx_path = cache.onnx(
        spec, _onnx_precision(backend), batch, h, w, module_factory=deploy_source, int8_mode=_int8_mode(backend)
    )
    return file_runner(backend, onnx_path, data, threads, cache)


def file_runner(backend: Backend, onnx_path: Any, data: np.ndarray, threads: int, cache: ArtifactCache) -> Runner:
    """A runner for an exported ONNX file on an ONNX Runtime or TensorRT backend (the engine is built in the cache)."""
    if backend.runtime == "onnxruntime":
        return _ort_runner(onnx_path, backend, data, threads, cache)
    engine = cache.engine(onnx_path, backend.precision)
    try:
        return engine.runner(data)
    except ExportError as exc:
        raise BackendUnavailable(str(exc)) from None
