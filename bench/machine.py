"""The machine line every absolute time is labelled with: CPU, cores, GPU, threads and library versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib import metadata
from typing import Any

__all__ = ["cpu_model", "machine_info", "machine_line", "usable_cores"]

_LIBRARIES = ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "numpy", "maedet")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's limit), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "driver_capability": f"{props.major}.{props.minor}",
    }


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Everything a reader needs to judge absolute times (``threads``: the fixed CPU thread count used)."""
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "gpu": _gpu(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "libraries": _versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line: 'AMD EPYC · 2 cores, 2 threads · no GPU · torch 2.14.1 · onnxruntime 1.32.0 · ...'."""
    parts = [
        info.get("cpu", "unknown CPU"),
        f"{info.get('cores')} cores, {info.get('threads')} thread{'' if info.get('threads') == 1 else 's'}",
    ]
    gpu = info.get("gpu")
    parts.append(f"{gpu['name']} ({gpu['memory_gb']} GB, CUDA {gpu['cuda']})" if gpu else "no GPU")
    libs = info.get("libraries", {})
    shown = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")
    parts += [f"{name} {libs[name]}" for name in shown if name in libs]
    parts.append(info.get("date", ""))
    return " · ".join(p for p in parts if p)
