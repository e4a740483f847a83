"""ONNX → TensorRT engine, for TensorRT 10 and 11 alike, chosen by feature detection (never version strings).

TensorRT 11 removed the FP16/INT8 builder flags and the calibrators: networks are strongly typed and precision
comes from the graph (fp16 tensors, Q/DQ nodes). TensorRT 10 still has the flags. So: when the builder has
precision flags we build a classic network and set FP16 / INT8 to match the graph; when it has none we create a
STRONGLY_TYPED network. Either way the ONNX file (fp32, fp16 or Q/DQ INT8) decides the precision.

Beside every engine goes a JSON sidecar (TensorRT version, GPU, compute capability, profiles, precision and the
ONNX metadata), because an engine only runs on the TensorRT version and GPU model that built it.
Everything except the build and the run itself is pure Python and is tested without TensorRT.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maedet.fileio import atomic_write_bytes, atomic_write_text

from .errors import ExportError, MissingDependencyError

__all__ = [
    "INSTALL_HINT",
    "BuildPlan",
    "ProfileShapes",
    "build_engine",
    "engine_mismatch_message",
    "gpu_identity",
    "plan_build",
    "profile_shapes",
    "read_sidecar",
    "require_tensorrt",
    "run_engine",
    "sidecar_path",
    "validate_workspace",
    "write_sidecar",
]

INSTALL_HINT = "pip install 'maedet[gpu]'"
SIDECAR_FORMAT = "maedet-engine/1"


# ------------------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile for the input: (N, C, H, W) at min, opt and max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def profile_shapes(
    *,
    batch: int,
    input_size: Sequence[int],
    dynamic: bool,
    in_chans: int = 3,
    min_batch: int | None = None,
    max_batch: int | None = None,
    min_size: Sequence[int] | None = None,
    max_size: Sequence[int] | None = None,
    multiple: int = 32,
) -> ProfileShapes:
    """Min/opt/max input shapes from the CLI flags.

    opt is ``--batch`` × ``--input-size``. Static exports have min = opt = max. Dynamic defaults: batch 1 to
    max(batch, 8); H and W from half of opt (rounded down to the stride, at least one stride) to twice opt.
    """
    h, w = (int(v) for v in input_size)
    opt = (int(batch), in_chans, h, w)
    if not dynamic:
        given = [x for x in (min_batch, max_batch, min_size, max_size) if x is not None]
        if given:
            raise ExportError(
                "--min-batch/--max-batch/--min-size/--max-size need --dynamic (a static engine has one shape)."
            )
        return ProfileShapes(opt, opt, opt)
    lo_b = 1 if min_batch is None else int(min_batch)
    hi_b = max(int(batch), 8) if max_batch is None else int(max_batch)
    lo_h, lo_w = (
        (_round_down(h // 2, multiple), _round_down(w // 2, multiple)) if min_size is None else map(int, min_size)
    )
    hi_h, hi_w = (h * 2, w * 2) if max_size is None else (int(v) for v in max_size)
    shapes = ProfileShapes((lo_b, in_chans, lo_h, lo_w), opt, (hi_b, in_chans, hi_h, hi_w))
    for label, shape in (("minimum", shapes.min), ("maximum", shapes.max)):
        if shape[0] < 1:
            raise ExportError(f"the {label} batch must be at least 1, got {shape[0]}.")
        if shape[2] % multiple or shape[3] % multiple or shape[2] < multiple or shape[3] < multiple:
            raise ExportError(f"the {label} input size {shape[2]}×{shape[3]} must be positive multiples of {multiple}.")
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        if not shapes.min[axis] <= shapes.opt[axis] <= shapes.max[axis]:
            raise ExportError(
                f"profile {name} must satisfy min ≤ opt ≤ max, got {shapes.min[axis]} ≤ {shapes.opt[axis]} ≤ "
                f"{shapes.max[axis]}."
            )
    return shapes


def validate_workspace(workspace_gib: float) -> int:
    """The builder's workspace pool limit in bytes (tactics needing more scratch memory are skipped)."""
    if not workspace_gib > 0 or workspace_gib > 1024:
        raise ExportError(f"--workspace must be between 0 and 1024 GiB, got {workspace_gib:g}.")
    return int(workspace_gib * (1 << 30))


# ------------------------------------------------------------------------------------------- build plan
@dataclass(frozen=True)
class BuildPlan:
    """How to build for one TensorRT: strongly typed or not, and which builder flags to set (by name)."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]
    network_flags: tuple[str, ...]


def plan_build(builder_flags: Collection[str], network_flags: Collection[str], precision: str) -> BuildPlan:
    """Choose the build mode from what this TensorRT offers (attribute names of BuilderFlag and
    NetworkDefinitionCreationFlag), so TensorRT 10 and 11 both work without parsing version strings.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"engine precision must be fp32, fp16 or int8, not {precision!r}.")
    has_flags = "FP16" in builder_flags and "INT8" in builder_flags
    if has_flags:  # TensorRT 10: a weakly typed network, flags allow the low-precision kernels the graph asks for
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
        return BuildPlan(False, flags, ())
    if "STRONGLY_TYPED" in network_flags:  # TensorRT 11: precision comes from the graph's tensor types
        return BuildPlan(True, (), ("STRONGLY_TYPED",))
    raise ExportError(
        "this TensorRT has neither precision builder flags nor strongly typed networks; use TensorRT 10 or 11."
    )


# ------------------------------------------------------------------------------------------- sidecar
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
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(
            f"engine sidecar {str(path)!r} is missing; rebuild the engine with maedet-export --trt."
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"engine sidecar {str(path)!r} cannot be read ({type(exc).__name__}).") from None
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


# ------------------------------------------------------------------------------------------- TensorRT itself
def require_tensorrt() -> Any:
    """The tensorrt module, or one sentence naming what is missing and how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(
            f"TensorRT is not installed (it needs an NVIDIA GPU machine): {INSTALL_HINT}; the ONNX file is written."
        ) from None
    return tensorrt


def gpu_identity() -> tuple[str | None, str | None]:
    """(GPU name, compute capability 'major.minor') of device 0 via torch.cuda; (None, None) without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def _require_gpu() -> tuple[str, str]:
    name, cc = gpu_identity()
    if name is None or cc is None:
        raise MissingDependencyError(
            "no NVIDIA GPU is visible (torch.cuda.is_available() is False), and TensorRT builds engines on the "
            f"GPU they will run on: use a CUDA machine with {INSTALL_HINT}; the ONNX file is written."
        )
    return name, cc


def _enum_names(enum: Any) -> set[str]:
    return {name for name in dir(enum) if name.isupper()}


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: str,
    profile: ProfileShapes | None,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    input_name: str = "input",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build and atomically write a serialized engine plus its sidecar; returns the sidecar contents."""
    say = log or (lambda _msg: None)
    workspace = validate_workspace(workspace_gib)
    if (metadata or {}).get("int8_mode") == "cpu":
        raise ExportError("this INT8 file uses uint8 asymmetric Q/DQ (int8 mode 'cpu'), which TensorRT cannot load.")
    trt = require_tensorrt()
    gpu_name, cc = _require_gpu()
    plan = plan_build(_enum_names(trt.BuilderFlag), _enum_names(trt.NetworkDefinitionCreationFlag), precision)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {str(onnx_path)!r}: {errors[:400]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if profile is not None and profile.min != profile.max:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(opt_profile)
    cache_file = Path(timing_cache) if timing_cache else None
    if cache_file is not None:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, False)

    say(f"building TensorRT {trt.__version__} engine ({precision}, strongly typed: {plan.strongly_typed})")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see its log above).")
    build_s = time.perf_counter() - start
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))

    info = {
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu_name,
        "compute_capability": cc,
        "precision": precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.builder_flags),
        "workspace_bytes": workspace,
        "profiles": [profile.to_dict()] if profile is not None else [],
        "build_seconds": round(build_s, 1),
        "onnx_file": Path(onnx_path).name,
        "onnx_metadata": dict(metadata or {}),
    }
    write_sidecar(engine_path, info)
    return info


def load_engine(engine_path: str | os.PathLike[str]) -> Any:
    """Deserialize an engine, first checking its sidecar against this TensorRT and GPU (one-sentence error)."""
    trt = require_tensorrt()
    gpu_name, cc = _require_gpu()
    sidecar = read_sidecar(engine_path)
    message = engine_mismatch_message(sidecar, trt.__version__, gpu_name, cc)
    if message:
        raise ExportError(message)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not load {str(engine_path)!r}; rebuild it with maedet-export --trt.")
    return engine


def run_engine(engine: Any, images: Any) -> dict[str, Any]:
    """Run an engine once on a float32 NCHW numpy batch; returns {output name: float32 numpy array}."""
    import numpy as np
    import torch

    trt = require_tensorrt()
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
    x = x.to(dtypes[engine.get_tensor_dtype(inputs[0])])
    context.set_input_shape(inputs[0], tuple(x.shape))
    context.set_tensor_address(inputs[0], x.data_ptr())
    results = {}
    for name in outputs:
        shape = tuple(context.get_tensor_shape(name))
        results[name] = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda")
        context.set_tensor_address(name, results[name].data_ptr())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the input copy and output allocations ran on the default stream
    with torch.cuda.stream(stream):
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT failed to run the engine.")
    stream.synchronize()
    return {name: t.float().cpu().numpy() for name, t in results.items()}


def sidecar_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar without the (long) ONNX metadata, for printing."""
    return {k: v for k, v in info.items() if k != "onnx_metadata"}


def profile_from_dict(data: Mapping[str, Sequence[int]]) -> ProfileShapes:
    return ProfileShapes(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))  # type: ignore[arg-type]
