"""Where candidates get scored: in this process, in local worker processes, or on a Ray cluster.

An executor only maps a picklable scorer over a batch and returns the scores in order; the search decides what
to score, so the result never depends on which executor ran (see evolution.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from maedet.errors import MissingDependencyError

from .errors import SearchError

__all__ = [
    "Executor",
    "LocalProcessExecutor",
    "RayExecutor",
    "SerialExecutor",
    "executor_parallelism",
    "make_executor",
]

LOGGER = logging.getLogger(__name__)


class Executor(Protocol):
    def map(self, fn: Callable[[Any], float], items: Sequence[Any]) -> list[float]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Score in this process (the right choice for the closed form: it costs microseconds)."""

    def map(self, fn: Callable[[Any], float], items: Sequence[Any]) -> list[float]:
        return [fn(item) for item in items]

    def close(self) -> None:
        pass


def _worker_init(threads: int) -> None:
    # Ctrl-C is the parent's business: it stops between batches and checkpoints.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


class LocalProcessExecutor:
    """``workers`` local processes (spawned, so torch is never forked mid-use)."""

    def __init__(self, workers: int, threads_per_worker: int = 1) -> None:
        if workers < 1:
            raise SearchError(f"workers must be at least 1, got {workers}.")
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(threads_per_worker,),
        )

    def map(self, fn: Callable[[Any], float], items: Sequence[Any]) -> list[float]:
        chunk = max(1, len(items) // (4 * self.workers))
        return list(self._pool.map(fn, items, chunksize=chunk))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def _ray_call(fn: Callable[[Any], float], item: Any) -> float:
    return fn(item)


def _host_and_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of an explicit Ray address (``ray://`` prefix allowed); None for 'auto', 'local' and the like."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail in one sentence within ``timeout`` seconds when nothing listens at the address (Ray itself waits
    minutes, silently, before it gives up)."""
    target = _host_and_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise SearchError(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s ({reason}); check --ray-address."
        ) from None


class RayExecutor:
    """Score on a Ray cluster (``address`` as for ``ray.init``: None starts or joins a local one, 'auto', or
    'ray://host:port'). Ray is the optional extra ``maedet[distributed]``."""

    def __init__(
        self, address: str | None = None, num_cpus_per_task: float = 1.0, timeout: float = 30.0, **init_kwargs: Any
    ) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError(
                "the Ray executor needs the 'ray' package: pip install 'maedet[distributed]'."
            ) from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:
                _check_reachable(address, timeout)
            try:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **init_kwargs)
            except (ConnectionError, TimeoutError, RuntimeError) as exc:
                reason = " ".join(str(exc).split())[:200]
                raise SearchError(f"cannot connect to Ray at {address or 'a local cluster'} ({reason}).") from None
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus_per_task))
        self._remote = ray.remote(num_cpus=num_cpus_per_task)(_ray_call)

    def map(self, fn: Callable[[Any], float], items: Sequence[Any]) -> list[float]:
        fn_ref = self._ray.put(fn)
        return list(self._ray.get([self._remote.remote(fn_ref, item) for item in items]))

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def executor_parallelism(executor: Executor) -> int:
    """How many candidates ``executor`` scores at once (1 for this process)."""
    return max(1, int(getattr(executor, "workers", 1)))


def make_executor(kind: str, workers: int = 1, ray_address: str | None = None, ray_timeout: float = 30.0) -> Executor:
    """'local' (``workers`` processes, at most one per CPU core, or this process when 1) or 'ray'."""
    if kind == "ray":
        return RayExecutor(ray_address, timeout=ray_timeout)
    if kind != "local":
        raise SearchError(f"unknown executor {kind!r}; choose local or ray.")
    cores = os.cpu_count() or 1
    if workers > cores:
        LOGGER.warning("%d workers asked for, but this machine has %d CPU cores: using %d.", workers, cores, cores)
        workers = cores
    if workers <= 1:
        return SerialExecutor()
    threads = max(1, (os.cpu_count() or 1) // workers)
    return LocalProcessExecutor(workers, threads)
