"""Peak memory of a model's first runs, measured the way each device allows (and labelled with how).

* CPU: the rise of the process's peak resident set (Linux VmHWM, reset through /proc/self/clear_refs after
  returning freed heap to the OS with malloc_trim) above what was resident before the runs: activations and
  runtime workspace; weights loaded earlier are excluded.
* CUDA, PyTorch: torch.cuda.max_memory_allocated above what was allocated before the runs.
* CUDA, ONNX Runtime / TensorRT: their allocators are not torch's, so the rise of device memory in use
  (torch.cuda.mem_get_info, the whole GPU) during the runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from pathlib import Path

__all__ = ["MEMORY_KINDS", "PeakMemory", "status_kib"]

MEMORY_KINDS = {
    "cpu-rss-rise": "CPU: rise of process peak RSS during warm-up runs (activations + workspace, weights excluded)",
    "cuda-max-allocated": "CUDA: torch max allocated rise during warm-up runs (activations + workspace)",
    "cuda-used-rise": "CUDA: rise of GPU memory in use during warm-up runs (whole device, runtime allocator)",
}
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(name).malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``with PeakMemory(kind) as m: ...``; then ``m.megabytes`` (None if not measurable).

    On the CPU, ``m.phase()`` inside the window closes a phase: it returns the peak rise since the last phase
    began and starts the next from the resident set of now, so ``m.phases`` holds each phase's peak (a session's
    creation, then its runs) while ``m.megabytes`` stays the whole window's.
    """

    def __init__(self, kind: str) -> None:
        if kind not in MEMORY_KINDS:
            raise ValueError(f"unknown memory kind {kind!r}")
        self.kind = kind
        self.megabytes: float | None = None
        self.phases: list[float] = []
        self._base = 0
        self._ok = False

    def phase(self) -> float | None:
        """The peak rise (MiB, above the window's start) since the previous phase; the peak then restarts."""
        if self.kind != "cpu-rss-rise":
            raise ValueError("phases are measured on the CPU only (peak RSS can be reset there)")
        peak = status_kib("VmHWM") if self._ok else None
        if peak is None:
            return None
        self.phases.append(max(0, peak - self._base) / 1024)
        self._ok = _reset_peak_rss()
        return self.phases[-1]

    def __enter__(self) -> PeakMemory:
        if self.kind == "cpu-rss-rise":
            _malloc_trim()
            self._ok = _reset_peak_rss()
            self._base = status_kib("VmRSS") or 0
        else:
            import torch

            torch.cuda.synchronize()
            if self.kind == "cuda-max-allocated":
                torch.cuda.reset_peak_memory_stats()
                self._base = torch.cuda.memory_allocated()
            else:
                free, total = torch.cuda.mem_get_info()
                self._base = total - free
            self._ok = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._ok or exc[0] is not None:
            return
        if self.kind == "cpu-rss-rise":
            peak = status_kib("VmHWM")
            if peak is not None:
                self.phases.append(max(0, peak - self._base) / 1024)
                self.megabytes = max(self.phases)
            return
        import torch

        torch.cuda.synchronize()
        if self.kind == "cuda-max-allocated":
            self.megabytes = max(0, torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            free, total = torch.cuda.mem_get_info()
            self.megabytes = max(0, (total - free) - self._base) / 2**20
