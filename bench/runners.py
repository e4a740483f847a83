"""Ready-to-time runners: one model on one backend, with its input already on the device.

Each runner's ``__call__`` does one inference and returns only when the result exists (CUDA work is
synchronised), so a wall-clock timer around it measures what a caller would wait for. ONNX files and TensorRT
engines are built once and kept in a cache folder keyed by everything that changes them, so reruns are fast.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend
from .errors import BenchError
from .models import ModelSpec

__all__ = ["ArtifactCache", "BackendUnavailable", "OrtRunner", "TorchRunner", "TrtRunner", "make_input"]

ONNX_OPSET = 18
INT8_CALIB_BATCHES = 4  # synthetic calibration: timing does not depend on calibration quality


class BackendUnavailable(RuntimeError):
    """Found out only when trying (e.g. ONNX Runtime fell back to CPU): the row is skipped with this reason."""


def make_input(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """The same normalised-image-like input for every model and backend."""
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice through the root logger on every export; keep the run's output clean."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class ArtifactCache:
    """Exported ONNX files and TensorRT engines under ``root``, named by model, input, batch and precision."""

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.log = log or (lambda _m: None)

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create cache folder {str(self.root)!r}: {exc.strerror}.") from None

    def onnx_path(
        self, spec: ModelSpec, precision: str, batch: int, height: int, width: int, int8_mode: str | None = None
    ) -> Path:
        import torch

        from maedet import __version__

        tag = f"opset{ONNX_OPSET}-torch{torch.__version__}-maedet{__version__}"
        if precision == "int8":
            tag += f"-calib{INT8_CALIB_BATCHES}"
            precision = f"int8{int8_mode}" if int8_mode else precision
        digest = hashlib.sha1(tag.encode()).hexdigest()[:8]
        return self.root / f"{spec.cache_key()}-{batch}x3x{height}x{width}-{precision}-{digest}.onnx"

    def onnx(
        self,
        spec: ModelSpec,
        precision: str,
        batch: int,
        height: int,
        width: int,
        module_factory: Callable[[], Any] | None = None,
        int8_mode: str | None = None,
    ) -> Path:
        """The cached ONNX file for this model and input, exported (C2..C5 features) on first use.

        ``module_factory`` returns the exporter's resolved deploy form for this spec (shared with the PyTorch
        backends, so the model is built once); without it the exporter builds the model from its name. ``int8_mode``:
        the exporter's INT8 layout ('cpu' is ONNX Runtime CPU's fast layout, 'portable' is what TensorRT reads).
        """
        path = self.onnx_path(spec, precision, batch, height, width, int8_mode)
        if path.is_file():
            return path
        self._prepare_root()
        from maedet.export import ExportError, export_onnx

        self.log(f"exporting {spec.label} to ONNX ({precision}, {batch}×3×{height}×{width})")
        kwargs: dict[str, Any] = dict(
            input_size=(height, width), batch=batch, outputs="features", precision=precision, check=False
        )
        if precision == "int8":
            kwargs["calib_batches"] = INT8_CALIB_BATCHES
            if int8_mode is not None:
                kwargs["int8_mode"] = int8_mode
        model: Any = module_factory() if module_factory is not None else spec.name
        if module_factory is None and spec.name == "maedet":
            kwargs["structure"] = spec.structure
        try:
            with _quiet_logging():
                return Path(export_onnx(model, path, opset=ONNX_OPSET, **kwargs).path)
        except ExportError as exc:
            raise BackendUnavailable(f"export to ONNX failed: {exc}") from None

    def engine(self, onnx_path: Path, precision: str) -> Any:
        """A deserialized TensorRT engine for ``onnx_path``, built (with maedet.export) on first use.

        Engines only run on the TensorRT version and GPU model that built them, so both are in the file name;
        the exporter's sidecar check refuses a mismatched engine with one sentence.
        """
        import tensorrt as trt
        import torch

        from maedet.export import ExportError
        from maedet.export.tensorrt import build_engine, load_engine

        gpu = "".join(c if c.isalnum() else "_" for c in torch.cuda.get_device_name())
        path = self.root / f"{onnx_path.stem}-trt{trt.__version__}-{precision}-{gpu}.engine"
        try:
            if not path.is_file():
                self.log(f"building TensorRT {precision} engine from {onnx_path.name}")
                build_engine(onnx_path, path, precision=precision, profile=None, timing_cache=self.root / "trt.cache")
            return load_engine(path)
        except ExportError as exc:
            raise BackendUnavailable(str(exc)) from None


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
        self.module = module.to(device=device, dtype=dtype, memory_format=fmt).eval()
        if backend.compile:
            self.module = torch.compile(self.module)
        self.x = torch.from_numpy(data).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
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


class OrtRunner:
    """ONNX Runtime on the backend's execution provider; on CUDA the tensors stay on the device (IO binding)."""

    def __init__(self, onnx_path: Path, backend: Backend, data: np.ndarray, threads: int, cache_dir: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        providers: list[Any]
        if backend.provider == "TensorrtExecutionProvider":
            trt_opts = {
                "device_id": 0,
                "trt_fp16_enable": backend.precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir / "ort-trt"),
            }
            (cache_dir / "ort-trt").mkdir(parents=True, exist_ok=True)
            providers = [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", {"device_id": 0})]
        elif backend.provider == "CUDAExecutionProvider":
            providers = [("CUDAExecutionProvider", {"device_id": 0})]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types
            raise BackendUnavailable(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
        active = self.session.get_providers()[0]
        if active != backend.provider:
            raise BackendUnavailable(f"ONNX Runtime fell back to {active} instead of {backend.provider}")
        inp = self.session.get_inputs()[0]
        x = data.astype(np.float16) if inp.type == "tensor(float16)" else data
        self.binding = None
        if backend.device == "cuda":
            self.binding = self.session.io_binding()
            self._x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self.binding.bind_ortvalue_input(inp.name, self._x)
            for out in self.session.get_outputs():
                self.binding.bind_output(out.name, "cuda", 0)
        else:
            self.feed = {inp.name: x}
            self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
        else:
            self.session.run(self.names, self.feed)

    def close(self) -> None:
        self.binding = None
        del self.session


class TrtRunner:
    """A TensorRT engine executed on a CUDA stream, with torch tensors as its input and output buffers."""

    def __init__(self, engine: Any, data: np.ndarray) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.engine = engine
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, Any] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        # Inputs first: with dynamic shapes the outputs' shapes are known only once the input shape is set.
        for name in sorted(names, key=lambda n: not is_input[n]):
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            if is_input[name]:
                buf = torch.from_numpy(data).to(device="cuda", dtype=dtype).contiguous()
                self.context.set_input_shape(name, tuple(buf.shape))
            else:
                buf = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.buffers[name] = buf
            self.context.set_tensor_address(name, buf.data_ptr())
        torch.cuda.synchronize()  # the buffers were filled on the default stream; the engine runs on its own
        self.stream = torch.cuda.Stream()

    def __call__(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()

    def close(self) -> None:
        del self.context, self.engine, self.buffers
        self._torch.cuda.empty_cache()
