"""Synchronised batch norm on every device: torch's SyncBatchNorm on CUDA, and its counterpart for CPU processes.

torch's ``SyncBatchNorm`` refuses CPU tensors (and DDP refuses it in a CPU module), so a CPU run on several
processes (and the CPU proof that two processes equal one) could not use it. :class:`CpuSyncBatchNorm` is a
batch norm whose training forward all-reduces the batch mean and then the squared deviations over the process
group, through ``torch.distributed.nn.functional.all_reduce`` (autograd-aware, so the gradient flows through the
shared statistics as in torch's CUDA kernel). In eval mode or in a single process it is plain batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm  # private, no public base: torch's own SyncBatchNorm derives it

__all__ = ["CpuSyncBatchNorm", "convert_sync_batchnorm"]


def _all_reduce_sum(tensor: torch.Tensor, group: object) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM, group=group or dist.group.WORLD)


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm with statistics over every process (two-pass mean and variance), for CPU tensors."""

    process_group: object = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        count = torch.tensor(float(input.numel() // input.shape[1]))
        total = _all_reduce_sum(torch.cat([input.sum(dims), count.view(1)]), self.process_group)
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = input - mean.view(shape)
        var = _all_reduce_sum((centred * centred).sum(dims), self.process_group) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running(mean.detach(), var.detach(), float(n.detach()))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        """The running statistics as torch's batch norm keeps them (unbiased variance)."""
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(var * n / max(n - 1, 1.0), alpha=momentum)


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Every BatchNorm of ``model`` synchronised (torch's conversion; the CPU class off CUDA); other norms kept."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if torch.device(device).type != "cuda":
        for module in model.modules():
            if type(module) is nn.SyncBatchNorm:
                module.__class__ = CpuSyncBatchNorm
    return model
