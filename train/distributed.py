"""Several processes through torch's own engine: torchrun sets the environment, DDP and a sampler do the rest.

``torchrun --nproc_per_node N -m maedet.train ...`` (or ``maedet-train --nproc N``, which starts torchrun) gives
every process RANK, LOCAL_RANK and WORLD_SIZE; several machines use torchrun's own rendezvous flags
(``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``). NCCL on CUDA, gloo on CPU. Rank 0 alone writes and logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from maedet.errors import MaeDetError

__all__ = [
    "Distributed", "all_reduce_mean", "barrier", "launch_torchrun", "main_value", "setup_distributed", "teardown",
]  # fmt: skip


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among ``world`` processes and the device it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise MaeDetError(f"the environment variable {name}={value!r} is not a whole number.") from None


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun announced (if any) and pick this process's device."""
    world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise MaeDetError("--device cuda was asked, but torch sees no CUDA device here.")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local_rank, target)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all processes (for logging; gradients are averaged by DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def main_value(value: float) -> float:
    """Rank 0's ``value`` on every process (one clock decides a time-fitted plan, so all processes keep it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """``maedet-train --nproc N ...``: the same command under ``python -m torch.distributed.run`` on this machine."""
    if nproc < 1:
        raise MaeDetError(f"--nproc must be 1 or more, got {nproc}.")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "maedet.train", *argv]  # fmt: skip
    return subprocess.call(command)
