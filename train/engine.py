"""One training process: the step (AMP, clipping, EMA), the epoch with its progress bar, and the state to resume.

The detector's loss (``GFocalV2.loss``) is called through a small module that DDP wraps, so gradients are averaged
over the processes in backward; the loss averages its own normalisers over processes, which makes N processes
× B images equal to one process × N·B images.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.zoo.gfl import GFocalV2

from .checkpoint import capture_rng, restore_rng
from .dataset import Batch, DetectionLoader
from .distributed import Distributed, all_reduce_mean
from .interrupt import StopRequest
from .recipe import Recipe, scaled_lr
from .schedule import make_scheduler

__all__ = ["LOSS_NAMES", "DetectorLoss", "Progress", "Trainer"]

LOGGER = logging.getLogger("maedet")
LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_dfl")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DetectorLoss(nn.Module):
    """``forward`` = the detector's training loss, so DistributedDataParallel can wrap it."""

    def __init__(self, detector: GFocalV2) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]], pad_sizes: Any) -> dict:
        return self.detector.loss(images, targets, pad_sizes=pad_sizes)


@dataclass
class Progress:
    """Where the run stands: the next epoch to run and the batches of it already done."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    best_ap: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """The optimiser, schedule, scaler and EMA around one (possibly DDP-wrapped) detector."""

    def __init__(
        self,
        detector: GFocalV2,
        loader: DetectionLoader,
        recipe: Recipe,
        dist_env: Distributed,
        *,
        amp: str | None = None,
        clip_grad: float | None = None,
        ema_decay: float | None = None,
        channels_last: bool = False,
    ) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        detector.to(memory_format=self.memory_format)  # before DDP and the EMA copy: both follow the layout
        self.detector, self.loader, self.recipe, self.dist = detector, loader, recipe, dist_env
        self.loss_module: nn.Module = DetectorLoss(detector)
        if dist_env.world > 1:
            ids = [dist_env.device.index] if dist_env.device.type == "cuda" else None
            self.loss_module = nn.parallel.DistributedDataParallel(self.loss_module, device_ids=ids)
        self.global_batch = recipe.batch_per_process * dist_env.world
        self.lr = scaled_lr(recipe, self.global_batch)
        self.optimizer = torch.optim.SGD(detector.parameters(), lr=self.lr, momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay)  # fmt: skip
        self.iters_per_epoch = len(loader)
        self.scheduler = make_scheduler(self.optimizer, self.iters_per_epoch, lambda: self.recipe)
        self.amp_dtype = _AMP_DTYPES[amp] if amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.clip_grad = clip_grad
        self.ema = _make_ema(detector, ema_decay)
        self.progress = Progress()

    # ------------------------------------------------------------------------------------------- one step
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.amp_dtype)

    def step(self, batch: Batch) -> dict[str, float]:
        """Forward, backward, clip, optimiser and schedule step, EMA update; returns the loss terms."""
        batch = batch.to(self.dist.device, non_blocking=True)
        images = batch.images.contiguous(memory_format=self.memory_format)
        with self._autocast():
            losses = self.loss_module(images, batch.targets, batch.pad_sizes)
        total = sum(losses[name] for name in LOSS_NAMES)
        if not torch.isfinite(total):
            raise MaeDetError(
                f"the loss became {float(total)} at step {self.progress.step}; lower the learning rate (--lr) or "
                "use --clip-grad."
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.detector.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.progress.step += 1
        if self.ema is not None:
            self.ema.update(self.detector, step=self.progress.step)
        values = torch.stack([losses[n].detach().float() for n in LOSS_NAMES])
        return dict(zip(LOSS_NAMES, all_reduce_mean(values).tolist(), strict=True))

    # ------------------------------------------------------------------------------------------- one epoch
    def batches(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The epoch's batches from batch ``skip`` on (the same as uninterrupted: the loader reseeds from the epoch)."""
        self.loader.set_epoch(epoch, start_batch=skip)
        yield from self.loader

    def run_epoch(self, epoch: int, stop: StopRequest, on_step: Any = None) -> dict[str, float] | None:
        """Train one epoch (from where it was left); mean loss terms, or None when a stop was asked mid-epoch."""
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        seen, start = 0, time.perf_counter()
        for batch in self.batches(epoch, self.progress.batches_done):
            losses = self.step(batch)
            for name in LOSS_NAMES:
                sums[name] += losses[name]
            seen += 1
            self.progress.batches_done += 1
            if on_step is not None:
                on_step(losses, self.optimizer.param_groups[0]["lr"], len(batch) * self.dist.world)
            if _agreed(stop.requested):
                return None
        seconds = time.perf_counter() - start
        means = {name: value / max(seen, 1) for name, value in sums.items()}
        means["loss"] = sum(means[n] for n in LOSS_NAMES)
        means["images_per_s"] = seen * self.global_batch / max(seconds, 1e-9)
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        self.progress.epoch, self.progress.batches_done = epoch + 1, 0
        return means

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly (plain tensors and containers, for weights_only loading)."""
        p = self.progress
        return {
            "model": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": capture_rng(),
            "epoch": p.epoch, "batches_done": p.batches_done, "step": p.step, "elapsed_s": p.elapsed_s,
            "best_ap": p.best_ap, "records": p.records, "world": self.dist.world,
            "plan": {"epochs": self.recipe.epochs, "steps": list(self.recipe.steps)},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world") != self.dist.world:
            LOGGER.warning(
                "the run was saved with %s processes and resumes with %d", state.get("world"), self.dist.world
            )
        self.detector.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        restore_rng(state["rng"])
        if state.get("plan"):  # the epochs and steps --max-minutes fitted, where the run was
            plan = state["plan"]
            self.recipe = replace(self.recipe, epochs=int(plan["epochs"]), steps=tuple(int(s) for s in plan["steps"]))
        self.progress = Progress(state["epoch"], state["batches_done"], state["step"], state["elapsed_s"],
                                 state["best_ap"], list(state["records"]))  # fmt: skip


def _agreed(flag: bool) -> bool:
    """True on every process when any process saw the flag (so all of them stop at the same step)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([float(flag)])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _make_ema(detector: GFocalV2, decay: float | None) -> Any:
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(detector, decay=decay)


def eta_seconds(done: int, total: int, seconds: float) -> float:
    return math.inf if done == 0 else seconds / done * (total - done)
