"""OpenVINO, the x86 CPU runtime, shaped like ONNX Runtime's part of the runtime layer (:mod:`maedet.runtime`).

The exporter's parity check, the bench's runners, ``maedet-detect --openvino`` and the latency profiler all go
through here, so the compile settings are set once (docs/design.md, 'Export and runtimes'):

* :func:`ov_model` reads an ONNX file (``ov.convert_model``) or an IR ``.xml`` (``Core.read_model``);
  :func:`ov_compile` compiles it on CPU with fixed threads, the latency hint, one stream, no thread pinning (ONNX
  Runtime's CPU sessions are not pinned either) and **f32 inference precision**: OpenVINO's CPU plugin defaults to
  bf16 on CPUs with AVX-512 BF16 or AMX, which would make an "fp32" row a bf16 one.
* :func:`ov_run` runs a compiled model once on float32 arrays → {output name: array} in the file's output order;
  :class:`OvRunner` is a ready-to-time callable like :class:`~maedet.runtime.OrtRunner`.
* :func:`save_ov_ir` writes ``model.xml`` + ``model.bin`` atomically, our metadata in the IR's ``rt_info`` under
  ``maedet`` (:func:`ov_metadata` reads it back), weights kept as they are (``compress_to_fp16=False``).

OpenVINO's exceptions become one-sentence :class:`~maedet.errors.ExportError`; without openvino every entry point
says so with the install hint. This module imports neither torch nor openvino at import time.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, MissingDependencyError, first_line, shorten
from .fileio import atomic_output_dir

__all__ = [
    "IR_FILE",
    "OV_INSTALL_HINT",
    "OvRunner",
    "is_ir_folder",
    "ov_calls",
    "ov_compile",
    "ov_errors",
    "ov_message",
    "ov_metadata",
    "ov_model",
    "ov_run",
    "require_openvino",
    "save_ov_ir",
]

OV_INSTALL_HINT = "pip install 'maedet[openvino]'"
IR_FILE = "model.xml"  # with model.bin beside it: the folder maedet-export --openvino writes
METADATA_SECTION = "maedet"  # rt_info section holding the export's metadata (text values, as ONNX metadata_props)
_OV_FLOAT_TYPES = {"f32": np.float32, "f16": np.float16}


def require_openvino() -> Any:
    """The openvino module, or one sentence saying it is missing and how to install it."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"OpenVINO is not installed: {OV_INSTALL_HINT}.") from None
    return openvino


@cache
def ov_errors() -> tuple[type[Exception], ...]:
    """OpenVINO's own exception types: the runtime's RuntimeError, the ONNX frontend's failures (none derives
    from RuntimeError) and the model converter's Error."""
    import openvino.frontend as frontend
    from openvino.tools.ovc.error import Error

    names = ("GeneralFailure", "InitializationFailure", "NotImplementedFailure", "OpConversionFailure")
    own = [getattr(frontend, n) for n in (*names, "OpValidationFailure") if hasattr(frontend, n)]
    return (RuntimeError, Error, *own)


@contextlib.contextmanager
def ov_calls(failure: str) -> Iterator[None]:
    """OpenVINO's failures as one ExportError sentence starting with ``failure``."""
    try:
        yield
    except ov_errors() as exc:
        raise ExportError(f"{failure}: {ov_message(exc)}") from None


def ov_message(exc: BaseException) -> str:
    """The line of an OpenVINO error that says what is wrong: its messages start with one 'Exception from
    FILE:LINE:' line per C++ frame, which say only where."""
    lines = [line.strip() for line in str(exc).splitlines()]
    told = [line for line in lines if line and not line.startswith(("Exception from ", "Check '"))]
    return shorten(told[0], 300) if told else first_line(exc)


@cache
def _core() -> Any:
    return require_openvino().Core()


def is_ir_folder(path: str | os.PathLike[str]) -> bool:
    """A folder holding an IR written by maedet-export --openvino (model.xml + model.bin)."""
    folder = Path(path)
    return (folder / IR_FILE).is_file() and (folder / IR_FILE).with_suffix(".bin").is_file()


def _ir_file(path: Path) -> Path:
    """The .xml of an IR given as the file or its folder; a folder without one is one sentence."""
    if path.is_dir():
        if not is_ir_folder(path):
            raise ExportError(
                f"{str(path)!r} holds no OpenVINO IR ({IR_FILE} and model.bin); write one with "
                "maedet-export MODEL --openvino DIR."
            )
        return path / IR_FILE
    if not path.is_file():
        raise ExportError(f"cannot read {str(path)!r}: {'not a regular file' if path.exists() else 'no such file'}.")
    return path


def ov_model(source: str | os.PathLike[str] | bytes, what: str = "the model") -> Any:
    """An ``ov.Model`` from ONNX bytes (``ov.convert_model``), or an ONNX file or IR (its .xml or its folder)
    read by ``Core.read_model``, which picks the frontend by the file's suffix."""
    ov = require_openvino()
    with ov_calls(f"OpenVINO cannot read {what}"):
        if isinstance(source, bytes):
            return ov.convert_model(io.BytesIO(source))
        return _core().read_model(str(_ir_file(Path(source))))


def ov_compile(
    model: Any,
    *,
    threads: int | None = None,
    denormals_as_zero: bool = False,
    profile: bool = False,
    what: str = "the model",
) -> Any:
    """A ``CompiledModel`` on CPU (``model``: an ``ov.Model`` or anything :func:`ov_model` reads).

    ``threads``: inference threads (None lets OpenVINO choose). ``denormals_as_zero`` flushes denormals, as the
    bench does for ONNX Runtime. ``profile`` turns on per-node counters (``PERF_COUNT``).
    """
    if isinstance(model, (str, os.PathLike, bytes)):
        model = ov_model(model, what)
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32",
        "CPU_DENORMALS_OPTIMIZATION": denormals_as_zero,
        "PERF_COUNT": profile,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    with ov_calls(f"OpenVINO cannot compile {what} for CPU"):
        return _core().compile_model(model, "CPU", config)


def _feed(compiled: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs by name, float arrays cast to the type the model declares (a single array feeds the first input)."""
    declared = compiled.inputs
    given = {declared[0].get_any_name(): inputs} if isinstance(inputs, np.ndarray) else dict(inputs)
    feed = {}
    for port in declared:
        name = port.get_any_name()
        if name not in given:
            raise ExportError(f"the model needs an input named {name!r}; got {', '.join(given) or 'none'}.")
        dtype = _OV_FLOAT_TYPES.get(port.get_element_type().get_type_name())
        feed[name] = np.ascontiguousarray(given[name], dtype=dtype) if dtype else np.ascontiguousarray(given[name])
    return feed


def ov_run(compiled: Any, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a compiled model once; returns {output name: array} (copies) in the model's output order."""
    with ov_calls("OpenVINO failed to run the model"):
        results = compiled.create_infer_request().infer(_feed(compiled, inputs))
    return {port.get_any_name(): np.array(results[port]) for port in compiled.outputs}


class OvRunner:
    """A compiled model with its input already set on one infer request, ready to time.

    ``keep_profiles`` (with a model compiled with ``profile=True``) keeps each run's per-node counters in
    ``profiles``: OpenVINO holds only the last run's, and a profiler needs every timed run's.
    """

    def __init__(
        self, compiled: Any, inputs: np.ndarray | Mapping[str, np.ndarray], *, keep_profiles: bool = False
    ) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.profiles: list[list[Any]] | None = [] if keep_profiles else None
        with ov_calls("OpenVINO could not set the input"):
            for name, array in _feed(compiled, inputs).items():
                self.request.set_tensor(name, require_openvino().Tensor(array))

    def __call__(self) -> None:
        self.request.infer()
        if self.profiles is not None:
            self.profiles.append(self.request.profiling_info)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def save_ov_ir(model: Any, folder: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    """Write ``model`` as ``folder/model.xml`` + ``model.bin`` (staged, then renamed), ``metadata`` (text values)
    in its rt_info; returns the .xml path."""
    ov = require_openvino()
    for key, value in metadata.items():
        model.set_rt_info(value, [METADATA_SECTION, key])
    with atomic_output_dir(folder, "OpenVINO IR folder") as staging, ov_calls("OpenVINO cannot save the IR"):
        ov.save_model(model, str(staging / IR_FILE), compress_to_fp16=False)
    return Path(folder) / IR_FILE


def ov_metadata(model: Any) -> dict[str, str]:
    """The metadata :func:`save_ov_ir` stored (text values; empty when the IR has none)."""
    info = model.get_rt_info()
    if METADATA_SECTION not in info:
        return {}
    section = model.get_rt_info([METADATA_SECTION])
    return {str(key): str(value.astype(str)) for key, value in section.astype(dict).items()}
