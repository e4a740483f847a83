"""What ONNX Runtime CPU really takes for a network: the process peak RSS rise of a fresh session and its first runs.

Each network is exported here (the profile's export path: BN folded, C2..C5 outputs) and measured in a fresh Python
subprocess, so one network's arena, allocator caches and peak do not leak into the next. Inside the subprocess
ONNX Runtime and the input batch exist before the measurement starts; the window covers what a deployment pays per
model: reading the model, creating the session (initializers, pre-packed weights, the memory plan) and two runs
(the first allocates the activation arena). :class:`~.memory.PeakMemory` measures it (``cpu-rss-rise``) in two
phases, creation and runs, each a peak above the resident set before the window: the process's peak is the larger.

The subprocess runs glibc's allocator at its defaults (the caller's ``MALLOC_*`` and ``GLIBC_TUNABLES`` are not
passed on), or with a fixed mmap threshold when one is asked for: by default glibc raises its threshold to the size
of each large block freed, so the session's later copies of the weights come from the heap, whose holes stay
resident; a fixed threshold maps and returns every block above it (docs/memory.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maedet.zoo import Structure
from maedet.zoo.latency.memory import MAX_MMAP_THRESHOLD, MMAP_THRESHOLD_ENV

from .errors import BenchError

__all__ = [
    "MAX_MMAP_THRESHOLD",
    "MMAP_THRESHOLD_ENV",
    "PHASES",
    "child_environment",
    "export_network",
    "measure_model_file",
    "measure_networks",
    "measure_structure",
]

CHILD_TIMEOUT_S = 600
REPEATS = 3
PHASES = ("peak", "creation", "run")  # MiB each measurement reports: the whole window's, and each phase's


def export_network(structure: Structure, input_size: int, batch: int, path: Path, opset: int = 17) -> Path:
    """Write a backbone as the profile exports it (deploy form, C2..C5 outputs) to ``path``."""
    import torch

    from maedet.export.model_source import resolve_model
    from maedet.export.onnx_export import torch_to_onnx
    from maedet.zoo import fuse_bn

    source = resolve_model("maedet", structure=structure)
    example = torch.rand(batch, 3, input_size, input_size)
    proto = torch_to_onnx(fuse_bn(source.module.eval()), example, source.output_names, dynamic=False, opset=opset)
    path.write_bytes(proto.SerializeToString())
    return path


def child_environment(mmap_threshold: int | None = None) -> dict[str, str]:
    """The measuring subprocess's environment: this one's without the allocator settings of the caller's shell, and
    with ``MALLOC_MMAP_THRESHOLD_`` when a fixed threshold (bytes) is asked for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    if mmap_threshold is not None:
        if not 0 <= mmap_threshold <= MAX_MMAP_THRESHOLD:
            raise BenchError(f"a malloc mmap threshold must be 0 to {MAX_MMAP_THRESHOLD} bytes, got {mmap_threshold}.")
        env[MMAP_THRESHOLD_ENV] = str(mmap_threshold)
    return env


def measure_model_file(
    path: Path, input_size: int, batch: int, threads: int, repeats: int = REPEATS, mmap_threshold: int | None = None
) -> dict[str, float]:
    """Peak RSS rise (MiB) of a session over ``path`` and two runs (``peak``), and of its creation and its runs
    alone: each the median of ``repeats`` fresh subprocesses (where the allocator places the arena moves one
    measurement by up to 10 %), run with glibc's default allocator or a fixed ``mmap_threshold`` (bytes)."""
    env = child_environment(mmap_threshold)
    once = [_measure_once(path, input_size, batch, threads, env) for _ in range(repeats)]
    return {key: statistics.median(m[key] for m in once) for key in PHASES}


def _measure_once(path: Path, input_size: int, batch: int, threads: int, env: dict[str, str]) -> dict[str, float]:
    argv = [sys.executable, "-m", __name__, str(path), str(input_size), str(batch), str(threads)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"measuring the memory of {path.name} took over {CHILD_TIMEOUT_S} s.") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"measuring the memory of {path.name} failed: {last}")
    values = json.loads(lines[-1])
    if any(values.get(key) is None for key in PHASES):
        raise BenchError("this system cannot measure peak RSS (no /proc/self/clear_refs or VmHWM).")
    return {key: float(values[key]) for key in PHASES}


def measure_structure(
    structure: Structure,
    input_size: int,
    batch: int,
    threads: int,
    workdir: Path,
    repeats: int = REPEATS,
    mmap_threshold: int | None = None,
) -> dict[str, float]:
    path = export_network(structure, input_size, batch, workdir / "memory-network.onnx")
    try:
        return measure_model_file(path, input_size, batch, threads, repeats, mmap_threshold)
    finally:
        path.unlink(missing_ok=True)


def measure_networks(
    networks: Mapping[str, Structure],
    input_size: int,
    batch: int,
    threads: int,
    step: Callable[[str], None] | None = None,
    repeats: int = REPEATS,
    mmap_threshold: int | None = None,
) -> dict[str, dict[str, float]]:
    """Measured MiB (PHASES) of each named network, in order (``step`` is told each name before it is measured),
    with glibc's default allocator or a fixed ``mmap_threshold`` (bytes)."""
    measured: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="maedet-memory-") as tmp:
        for name, structure in networks.items():
            if step is not None:
                step(name)
            measured[name] = measure_structure(
                structure, input_size, batch, threads, Path(tmp), repeats, mmap_threshold
            )
    return measured


def _child(argv: list[str]) -> dict[str, Any]:
    """In the fresh subprocess: the runtime and the input first, then the measured window."""
    import numpy as np

    from maedet.runtime import ort_session

    from .memory import PeakMemory

    path, size, batch, threads = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    images = np.random.default_rng(1).random((batch, 3, size, size), dtype=np.float32)
    with PeakMemory("cpu-rss-rise") as peak:
        session = ort_session(path, threads=threads, denormals_as_zero=True, what=path.name)
        creation = peak.phase()
        name = session.get_inputs()[0].name
        for _ in range(2):
            session.run(None, {name: images})
    run = peak.phases[-1] if creation is not None and len(peak.phases) == 2 else None
    return {"peak": peak.megabytes, "creation": creation, "run": run}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1:])))
