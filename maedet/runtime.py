"""One place to run an exported model: ONNX Runtime sessions and TensorRT engines.

The exporter's parity checks, the bench's runners and anything else that runs or times an exported file use
these, so session options, providers, dtypes, device buffers and CUDA streams are handled once
(docs/design.md, 'Export and runtimes').

* ONNX Runtime: :func:`ort_session` makes a session with fixed threads and quiet logging, and checks with
  ``session.get_providers()`` that the execution provider asked for really runs (onnxruntime and onnxruntime-gpu
  install the same module, so a CPU-only build silently falls back). :func:`run_session` runs it once on float32
  arrays, cast to the file's input type; :class:`OrtRunner` is a ready-to-time callable.
* TensorRT, through Polygraphy (NVIDIA's own runner, kept current with each TensorRT release): :class:`TrtEngine`
  loads an engine after checking its sidecar against this TensorRT and GPU, runs it once (:meth:`TrtEngine.run`)
  or hands out a ready-to-time :class:`TrtRunner` whose input already lives on the GPU.

Every runner's ``__call__`` does one inference and returns only when its outputs exist, so a wall-clock timer
around it measures what a caller would wait for; ``close()`` frees what it holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .engine_sidecar import engine_mismatch_message, read_sidecar
from .errors import ExportError, MissingDependencyError, first_line

__all__ = [
    "CPU_PROVIDER",
    "INSTALL_HINT",
    "OrtRunner",
    "TrtEngine",
    "TrtRunner",
    "gpu_identity",
    "ort_providers",
    "ort_session",
    "require_gpu",
    "require_polygraphy",
    "require_tensorrt",
    "run_session",
    "session_feed",
]

INSTALL_HINT = "pip install 'maedet[gpu]'"
CPU_PROVIDER = "CPUExecutionProvider"
# An execution provider by name, or (name, provider options) as ONNX Runtime takes them.
Provider = str | tuple[str, dict[str, Any]]
_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


# ------------------------------------------------------------------------------------------- ONNX Runtime
@cache
def _ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's own exception types (Fail, InvalidGraph, NoSuchFile...: none derives from RuntimeError),
    plus the ValueError its Python layer raises for bad provider arguments."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (*own, ValueError)


def ort_providers(
    provider: str = CPU_PROVIDER, *, fp16: bool = False, cache_dir: str | os.PathLike[str] | None = None
) -> list[Provider]:
    """The provider list for one execution provider on GPU 0.

    The TensorRT EP lowers an fp32 graph itself (``fp16`` enables its half kernels), keeps its engines in
    ``cache_dir`` and hands what it cannot take to the CUDA EP.
    """
    if provider == "TensorrtExecutionProvider":
        options: dict[str, Any] = {"device_id": 0, "trt_fp16_enable": fp16}
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return [(provider, options), ("CUDAExecutionProvider", {"device_id": 0})]
    if provider == "CUDAExecutionProvider":
        return [(provider, {"device_id": 0})]
    return [provider]


def ort_session(
    model: str | os.PathLike[str] | bytes,
    *,
    providers: Sequence[Provider] = (CPU_PROVIDER,),
    threads: int | None = None,
    optimize: bool = True,
    denormals_as_zero: bool = False,
    profile_prefix: str | os.PathLike[str] | None = None,
    what: str = "the model",
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``providers`` (the first one must really run, else ExportError).

    ``threads``: intra-op threads (inter-op 1, sequential execution); None lets ONNX Runtime choose.
    ``optimize=False`` disables graph optimizations. ``denormals_as_zero`` flushes denormals (random weights
    must not hit slow denormal paths when timing). ``profile_prefix`` turns on ONNX Runtime's own profiler (per-node
    kernel times, written by ``session.end_profiling()`` to a file starting with it). ``what`` names the model in the
    one-sentence error.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its warnings (unused initializers...) are noise for our graphs
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if denormals_as_zero:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except _ort_errors() as exc:
        raise ExportError(f"ONNX Runtime cannot load {what}: {first_line(exc)}") from None
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    active = session.get_providers()[0]
    if active != wanted:
        raise ExportError(f"ONNX Runtime fell back to {active} instead of {wanted}.")
    return session


def session_feed(session: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs by name, float arrays cast to the type the file declares (fp16 for ``--io-half`` files).

    A single array feeds the first input.
    """
    declared = session.get_inputs()
    given = {declared[0].name: inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
    feed = {}
    for arg in declared:
        if arg.name not in given:
            raise ExportError(f"the model needs an input named {arg.name!r}; got {', '.join(given) or 'none'}.")
        dtype = _ORT_FLOAT_TYPES.get(arg.type)
        feed[arg.name] = np.ascontiguousarray(given[arg.name], dtype=dtype) if dtype else given[arg.name]
    return feed


def run_session(session: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session once; returns {output name: array} in the file's output order."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, session_feed(session, inputs)), strict=True))


class OrtRunner:
    """A session with its input fixed, ready to time; on CUDA the input and outputs stay on the GPU (IO binding)."""

    def __init__(self, session: Any, inputs: np.ndarray | Mapping[str, np.ndarray], *, device: str = "cpu") -> None:
        self.session = session
        self._feed = session_feed(session, inputs)
        self._names = [o.name for o in session.get_outputs()]
        self._binding = None
        if device == "cuda":
            import onnxruntime as ort

            self._binding = session.io_binding()
            self._device_inputs = {n: ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0) for n, x in self._feed.items()}
            for name, value in self._device_inputs.items():
                self._binding.bind_ortvalue_input(name, value)
            for name in self._names:
                self._binding.bind_output(name, "cuda", 0)

    def __call__(self) -> None:
        if self._binding is not None:
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
        else:
            self.session.run(self._names, self._feed)

    def close(self) -> None:
        self._binding = None
        self._device_inputs = {}
        self.session = None


# ------------------------------------------------------------------------------------------- TensorRT
def require_tensorrt() -> Any:
    """The tensorrt module, or one sentence naming what is missing and how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(
            f"TensorRT is not installed (it needs an NVIDIA GPU machine): {INSTALL_HINT}; the ONNX file is written."
        ) from None
    return tensorrt


def require_polygraphy() -> None:
    """Polygraphy builds, loads and runs our engines; it comes with the [gpu] extra."""
    try:
        import polygraphy.backend.trt  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            f"Polygraphy is not installed (TensorRT engines are built and run through it): {INSTALL_HINT}."
        ) from None


def gpu_identity() -> tuple[str | None, str | None]:
    """(GPU name, compute capability 'major.minor') of device 0 via torch.cuda; (None, None) without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def require_gpu() -> tuple[str, str]:
    """(GPU name, compute capability), or one sentence saying no NVIDIA GPU is visible."""
    name, cc = gpu_identity()
    if name is None or cc is None:
        raise MissingDependencyError(
            "no NVIDIA GPU is visible (torch.cuda.is_available() is False), and TensorRT builds engines on the "
            f"GPU they will run on: use a CUDA machine with {INSTALL_HINT}; the ONNX file is written."
        )
    return name, cc


@contextlib.contextmanager
def polygraphy_calls(failure: str) -> Iterator[None]:
    """Polygraphy quiet (errors only: its info lines go to stdout) and its failures as one ExportError sentence."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        try:
            yield
        except PolygraphyException as exc:
            raise ExportError(f"{failure}: {first_line(exc)}") from None


class TrtEngine:
    """A deserialized TensorRT engine; Polygraphy's TrtRunner does the binding, shapes, dtypes and stream."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrtEngine:
        """Deserialize ``path`` after checking its sidecar against this TensorRT and GPU (one-sentence errors)."""
        trt = require_tensorrt()
        require_polygraphy()
        gpu_name, cc = require_gpu()
        message = engine_mismatch_message(read_sidecar(path), trt.__version__, gpu_name, cc)
        if message:
            raise ExportError(message)
        from polygraphy.backend.trt import engine_from_bytes

        with polygraphy_calls(f"TensorRT could not load {str(path)!r}; rebuild it with maedet-export --trt"):
            engine = engine_from_bytes(Path(path).read_bytes())
        return cls(engine)

    def _io_names(self, input_mode: bool) -> list[str]:
        trt = require_tensorrt()
        mode = trt.TensorIOMode.INPUT if input_mode else trt.TensorIOMode.OUTPUT
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    @property
    def input_names(self) -> list[str]:
        return self._io_names(True)

    @property
    def output_names(self) -> list[str]:
        return self._io_names(False)

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The batch as the engine's first input, cast to that input's type (fp16 for ``--io-half`` files)."""
        trt = require_tensorrt()
        name = self.input_names[0]
        dtype = trt.nptype(self.engine.get_tensor_dtype(name))
        return {name: np.ascontiguousarray(images, dtype=dtype)}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run once on an NCHW batch; returns {output name: float32 array} (copies, safe to keep)."""
        from polygraphy.backend.trt import TrtRunner as PolygraphyRunner

        with polygraphy_calls("TensorRT failed to run the engine"), PolygraphyRunner(self.engine) as runner:
            outputs = runner.infer(self.feed(images), check_inputs=False)
            return {name: np.array(value, dtype=np.float32) for name, value in outputs.items()}

    def runner(self, images: np.ndarray) -> TrtRunner:
        """A ready-to-time callable with ``images`` already copied to the GPU."""
        return TrtRunner(self, images)


class TrtRunner:
    """One engine with its input on the GPU: each call runs it on Polygraphy's stream and waits for the outputs."""

    def __init__(self, engine: TrtEngine, images: np.ndarray) -> None:
        from polygraphy import cuda
        from polygraphy.backend.trt import TrtRunner as PolygraphyRunner
        from polygraphy.datatype import DataType

        with polygraphy_calls("TensorRT could not prepare the engine"):
            self._runner = PolygraphyRunner(engine.engine)
            self._runner.activate()
            self._inputs = {
                name: cuda.DeviceArray(shape=x.shape, dtype=DataType.from_dtype(x.dtype)).copy_from(x)
                for name, x in engine.feed(images).items()
            }

    def __call__(self) -> None:
        with polygraphy_calls("TensorRT failed to run the engine"):
            self._runner.infer(self._inputs, check_inputs=False, copy_outputs_to_host=False)

    def close(self) -> None:
        for array in self._inputs.values():
            array.free()
        self._inputs = {}
        self._runner.deactivate()
