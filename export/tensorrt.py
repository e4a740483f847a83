"""ONNX → TensorRT engine, for TensorRT 10 and 11 alike, chosen by feature detection (never version strings).

TensorRT 11 removed the FP16/INT8 builder flags and the calibrators: networks are strongly typed and precision
comes from the graph (fp16 tensors, Q/DQ nodes). TensorRT 10 still has the flags (docs/design.md, 'Export and
runtimes'). So: when the builder has precision flags we build a classic network and set FP16 / INT8 to match the
graph; when it has none we create a STRONGLY_TYPED network. Either way the ONNX file (fp32, fp16 or Q/DQ INT8)
decides the precision. Parsing, the builder configuration and the build itself are Polygraphy's (NVIDIA keeps it
current with each TensorRT release); the plan, the profiles and the sidecar are ours and are tested without
TensorRT.

Beside every engine goes a JSON sidecar (see :mod:`maedet.engine_sidecar`), because an engine only runs on
the TensorRT version and GPU model that built it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maedet.engine_sidecar import sidecar_path, write_sidecar
from maedet.fileio import atomic_write_bytes
from maedet.runtime import polygraphy_calls, require_gpu, require_polygraphy, require_tensorrt

from .errors import ExportError

__all__ = [
    "BuildPlan",
    "EngineBuild",
    "ProfileShapes",
    "build_engine",
    "float_layer_indices",
    "plan_build",
    "profile_shapes",
    "validate_workspace",
]

logger = logging.getLogger(__name__)


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


def _check_profile(shapes: ProfileShapes, multiple: int) -> None:
    for label, shape in (("minimum", shapes.min), ("maximum", shapes.max)):
        if shape[0] < 1:
            raise ExportError(f"the {label} batch must be at least 1, got {shape[0]}.")
        if shape[2] < multiple or shape[3] < multiple:  # any size from one stride up runs (the model pads nothing)
            raise ExportError(f"the {label} input size {shape[2]}×{shape[3]} must be at least {multiple}×{multiple}.")
    for axis, name in ((0, "batch"), (2, "height"), (3, "width")):
        if not shapes.min[axis] <= shapes.opt[axis] <= shapes.max[axis]:
            raise ExportError(
                f"profile {name} must satisfy min ≤ opt ≤ max, got {shapes.min[axis]} ≤ {shapes.opt[axis]} ≤ "
                f"{shapes.max[axis]}."
            )


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
        if any(x is not None for x in (min_batch, max_batch, min_size, max_size)):
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
    _check_profile(shapes, multiple)
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


# ------------------------------------------------------------------------------------------- the build
@dataclass(frozen=True)
class EngineBuild:
    """What :func:`build_engine` made: the engine file and the facts its sidecar records."""

    engine_path: Path
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    workspace_bytes: int
    profiles: tuple[ProfileShapes, ...]
    build_seconds: float
    onnx_file: str
    onnx_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.engine_path)

    def summary(self) -> dict[str, Any]:
        """The sidecar's facts without the (long) ONNX metadata, for printing and the CLI's JSON."""
        return {
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "builder_flags": list(self.builder_flags),
            "workspace_bytes": self.workspace_bytes,
            "profiles": [p.to_dict() for p in self.profiles],
            "build_seconds": self.build_seconds,
            "onnx_file": self.onnx_file,
        }

    def sidecar(self) -> dict[str, Any]:
        """Everything the ``<engine>.json`` sidecar holds (besides its format tag)."""
        return {**self.summary(), "onnx_metadata": dict(self.onnx_metadata)}


# ------------------------------------------------------------------------------------------- float layers
def float_layer_indices(
    layer_names: Sequence[str], float_nodes: Collection[str], node_names: Collection[str]
) -> tuple[list[int], list[str]]:
    """The TensorRT layers made from the ONNX nodes kept in float (``int8_float_layers``), and the float nodes
    that no layer came from.

    TensorRT's ONNX parser names a layer after its node; extra layers of one node get the name plus a suffix
    (``_1``, ``_output`` ...). A layer is its node's when the names match exactly, else it belongs to the longest
    node name it starts with followed by ``_`` (so ``/Relu_1``, itself a node, is never taken for ``/Relu``'s).
    """
    nodes, wanted = set(node_names), set(float_nodes)
    picked, found = [], set()
    for index, name in enumerate(layer_names):
        owner = name if name in nodes else max((n for n in nodes if name.startswith(n + "_")), key=len, default=None)
        if owner in wanted:
            picked.append(index)
            found.add(owner)
    return picked, sorted(wanted - found)


def _pin_float_layers(network: Any, onnx_path: Path, float_nodes: Collection[str]) -> int:
    """Set the float layers' precision and float outputs to fp32 (a weakly typed network, with the builder told to
    obey); returns how many layers were pinned. Unrun here: it needs TensorRT and a GPU (docs/int8.md)."""
    import onnx
    import tensorrt as trt

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    picked, missing = float_layer_indices(names, float_nodes, [n.name for n in graph.node])
    if missing:
        logger.warning("no TensorRT layer came from %d float node(s), e.g. %s", len(missing), missing[0])
    for index in picked:
        layer = network.get_layer(index)
        layer.precision = trt.float32
        for o in range(layer.num_outputs):
            if layer.get_output_type(o) in (trt.float32, trt.float16):
                layer.set_output_type(o, trt.float32)
    return len(picked)


def _enum_names(enum: Any) -> set[str]:
    return {name for name in dir(enum) if name.isupper()}


def _serialize(
    onnx_path: Path,
    plan: BuildPlan,
    builder_flags: Collection[str],
    profile: ProfileShapes | None,
    workspace: int,
    cache_file: Path | None,
    input_name: str,
    float_nodes: Collection[str] = (),
) -> tuple[bytes, bytes | None]:
    """Parse, configure and build with Polygraphy; returns (serialized engine, updated timing cache or None).

    ``float_nodes`` (an INT8 file's ``int8_float_layers``) are pinned to fp32 in a weakly typed network; a strongly
    typed one already runs them in fp32 (float weights, no Q/DQ around them)."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    profiles = None
    if profile is not None and profile.min != profile.max:
        profiles = [Profile().add(input_name, min=profile.min, opt=profile.opt, max=profile.max)]
    create_config = CreateConfig(
        tf32="TF32" in builder_flags,  # TensorRT's own default (Polygraphy would turn TF32 off)
        fp16="FP16" in plan.builder_flags,
        int8="INT8" in plan.builder_flags,
        profiles=profiles,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace},
        load_timing_cache=str(cache_file) if cache_file is not None and cache_file.is_file() else None,
        precision_constraints="obey" if float_nodes and not plan.strongly_typed else None,
    )
    with polygraphy_calls(f"TensorRT cannot parse {str(onnx_path)!r}"):
        network = network_from_onnx_path(str(onnx_path), strongly_typed=plan.strongly_typed)
    if float_nodes and not plan.strongly_typed:
        logger.info("%d TensorRT layers pinned to fp32", _pin_float_layers(network[1], onnx_path, float_nodes))
    with polygraphy_calls("TensorRT failed to build the engine (see its log above)"):
        config = create_config(network[0], network[1])
        serialized = bytes(engine_bytes_from_network(network, config))
    cache = bytes(config.get_timing_cache().serialize()) if cache_file is not None else None
    return serialized, cache


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    precision: str,
    profile: ProfileShapes | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    input_name: str = "input",
) -> EngineBuild:
    """Build a TensorRT engine from an exported ONNX file; write it and its sidecar atomically.

    ``precision`` is the ONNX file's (fp32, fp16 or int8: the graph decides, see the module docstring).
    ``profile``: the optimization profile of a dynamic file (None or min == max: static). ``timing_cache``: a
    file read when present and updated after the build. ``metadata``: the ONNX file's, kept in the sidecar.
    Needs TensorRT, Polygraphy and an NVIDIA GPU (``pip install 'maedet[gpu]'``); otherwise one sentence.
    """
    workspace = validate_workspace(workspace_gib)
    if (metadata or {}).get("int8_mode") == "cpu":
        raise ExportError("this INT8 file uses uint8 asymmetric Q/DQ (int8 mode 'cpu'), which TensorRT cannot load.")
    trt = require_tensorrt()
    require_polygraphy()
    gpu_name, cc = require_gpu()
    available = _enum_names(trt.BuilderFlag)
    plan = plan_build(available, _enum_names(trt.NetworkDefinitionCreationFlag), precision)
    cache_file = Path(timing_cache) if timing_cache else None

    logger.info("building TensorRT %s engine (%s, strongly typed: %s)", trt.__version__, precision, plan.strongly_typed)
    start = time.perf_counter()
    float_nodes = list((metadata or {}).get("int8_float_layers") or ())
    serialized, cache = _serialize(
        Path(onnx_path), plan, available, profile, workspace, cache_file, input_name, float_nodes
    )
    build = EngineBuild(
        engine_path=Path(engine_path),
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=cc,
        precision=precision,
        strongly_typed=plan.strongly_typed,
        builder_flags=plan.builder_flags,
        workspace_bytes=workspace,
        profiles=(profile,) if profile is not None else (),
        build_seconds=round(time.perf_counter() - start, 1),
        onnx_file=Path(onnx_path).name,
        onnx_metadata=dict(metadata or {}),
    )
    atomic_write_bytes(build.engine_path, serialized)
    if cache_file is not None and cache is not None:
        atomic_write_bytes(cache_file, cache)
    write_sidecar(build.engine_path, build.sidecar())
    return build
