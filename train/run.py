"""A whole training run, the Python API behind ``maedet-train``: checks, data, detector, epochs, outputs.

``train(settings)`` runs in every process that torchrun started (or alone); rank 0 alone writes and logs. Before
anything is written, the request is checked (the output folder, the data, every image header, the class count, the
batch against the data, the memory a step needs); a run that fails before its first checkpoint removes its folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maedet.detect.evaluate import load_annotations
from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text

from .checkpoint import BEST, LAST, load_state, save_state
from .coco_data import CocoRecords
from .data_setup import load_train_records, make_train_loader
from .distributed import Distributed, barrier, main_value, setup_distributed, teardown
from .engine import Trainer, _agreed
from .evaluation import validate
from .guards import check_amp, check_memory, check_out_folder
from .interrupt import stop_on_signals
from .model import build_detector, plain_copy
from .outputs import MetricsLog, push_to_hub, write_detector
from .progress import EpochBar
from .recipe import Recipe
from .schedule import continue_plan, fit_to_minutes
from .settings import SETTINGS_NAME, TrainSettings, read_settings
from .syncbn import convert_sync_batchnorm

__all__ = ["TrainResult", "TrainingInterrupted", "resume", "train"]

LOGGER = logging.getLogger("maedet")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a resumable checkpoint was written (exit 128 + ``signum``: 130 for
    Ctrl-C, 143 for SIGTERM, the statuses every other maedet tool and the shell use)."""

    def __init__(self, where: str, signum: int = signal.SIGINT) -> None:
        super().__init__(where)
        self.signum = int(signum)


@dataclass
class TrainResult:
    out: Path
    detector: Path | None
    epochs: int
    final_ap: dict[str, float]
    pushed: str | None = None


def train(settings: TrainSettings, *, resuming: bool = False) -> TrainResult:
    """Train as ``settings`` say (``resuming``: continue the run in ``settings.out``)."""
    settings.check()
    dist_env = setup_distributed(settings.device)
    try:
        return _train(settings, dist_env, resuming)
    finally:
        teardown()


def resume(out: str | Path, max_minutes: float | None = None) -> TrainResult:
    """Continue the run saved in ``out`` exactly where it stopped."""
    settings = read_settings(Path(out))
    if max_minutes is not None:
        settings.max_minutes = max_minutes
    return train(settings, resuming=True)


def _check_val(settings: TrainSettings, num_classes: int) -> None:
    if settings.val_data is None:
        return
    coco = load_annotations(settings.val_data)
    if len(coco.getCatIds()) != num_classes:
        raise MaeDetError(
            f"the val file {settings.val_data!r} has {len(coco.getCatIds())} categories but the training data has "
            f"{num_classes}."
        )
    root = Path(settings.val_images or ".")
    missing = [str(root / img["file_name"]) for img in coco.imgs.values() if not (root / img["file_name"]).is_file()]
    if missing:
        raise MaeDetError(f"{len(missing)} val images are not in {str(root)!r} (first: {missing[0]}).")


def _num_classes(settings: TrainSettings, coco: CocoRecords) -> int:
    if settings.num_classes is not None and settings.num_classes != coco.num_classes:
        raise MaeDetError(
            f"--num-classes {settings.num_classes} does not fit the data: {settings.data!r} has {coco.num_classes} "
            "categories."
        )
    return coco.num_classes


def _prepare(settings: TrainSettings, dist_env: Distributed, resuming: bool) -> tuple[Trainer, CocoRecords]:
    """Every check, then the detector, its loader and the trainer (nothing written yet)."""
    recipe, out = settings.recipe, Path(settings.out)
    check_amp(settings.amp, dist_env.device)
    check_out_folder(out, resuming)
    coco = load_train_records(settings.data, settings.images, recipe.batch_per_process * dist_env.world)
    num_classes = _num_classes(settings, coco)
    _check_val(settings, num_classes)
    torch.manual_seed(settings.seed)
    detector = build_detector(settings.model, num_classes, recipe.fpn_channels, recipe.stacked_convs)
    check_memory(detector, recipe)
    if dist_env.world > 1 and recipe.sync_bn:
        detector = convert_sync_batchnorm(detector, dist_env.device)
    detector.to(dist_env.device)
    loader = make_train_loader(coco, recipe, dist_env, settings.seed, settings.workers)
    trainer = Trainer(detector, loader, recipe, dist_env, amp=settings.amp, clip_grad=settings.clip_grad,
                      ema_decay=settings.ema_decay if settings.ema else None,
                      channels_last=settings.channels_last)  # fmt: skip
    if dist_env.is_main:
        LOGGER.info("lr %.5g = %.5g × global batch %d / 16 (%d process(es) × %d images); %d iterations per epoch",
                    trainer.lr, recipe.lr, trainer.global_batch, dist_env.world, recipe.batch_per_process,
                    trainer.iters_per_epoch)  # fmt: skip
    if resuming:
        _restore(trainer, out, recipe)
    return trainer, coco


def _restore(trainer: Trainer, out: Path, recipe: Recipe) -> None:
    """The saved state; a run that --max-minutes ended goes on to the recipe's epochs, with the lr steps it took."""
    trainer.load_state_dict(load_state(out / LAST))
    done = trainer.progress.epoch
    if trainer.recipe.epochs <= done < recipe.epochs:
        trainer.recipe = continue_plan(recipe, trainer.recipe, done)
        steps = ", ".join(map(str, trainer.recipe.steps))
        LOGGER.info("the time-fitted plan ended at epoch %d; continuing to the recipe's %d epochs (lr steps after "
                    "epochs %s)", done, recipe.epochs, steps)  # fmt: skip


def _eval_model(trainer: Trainer) -> Any:
    return trainer.ema.module if trainer.ema is not None else trainer.detector


def _end_epoch(
    trainer: Trainer, settings: TrainSettings, log: MetricsLog | None, means: dict[str, float], started: float
) -> None:
    """Evaluate when due, count the epoch's time (evaluation included), fit the plan to --max-minutes, record the
    metrics, write last.pt (and best.pt when the val AP improved)."""
    p, recipe, main = trainer.progress, trainer.recipe, trainer.dist.is_main
    record: dict[str, Any] = {"epoch": p.epoch, **means}
    due = p.epoch % recipe.eval_every == 0 or p.epoch == recipe.epochs
    if settings.val_data is not None and due and main:
        stats = validate(_eval_model(trainer), settings.val_data, settings.val_images or ".", recipe.eval_scale,
                         str(trainer.dist.device))  # fmt: skip
        record.update(stats)
        LOGGER.info("epoch %d val: %s", p.epoch, ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    p.elapsed_s += time.perf_counter() - started
    record["elapsed_min"] = p.elapsed_s / 60
    _fit_plan(trainer, settings)
    p.records.append(record)
    improved = "AP" in record and (p.best_ap is None or record["AP"] > p.best_ap)
    if improved:
        p.best_ap = record["AP"]
    if main:
        out = Path(settings.out)
        state = trainer.state_dict()
        save_state(out / LAST, state)
        if improved:
            save_state(out / BEST, state)
        assert log is not None
        log.add(record)
        LOGGER.info("epoch %d: loss %.4f (cls %.4f, bbox %.4f, dfl %.4f), lr %.3g, %.1f images/s", p.epoch,
                    means["loss"], means["loss_cls"], means["loss_bbox"], means["loss_dfl"], means["lr"],
                    means["images_per_s"])  # fmt: skip
    barrier()


def _epochs(trainer: Trainer, settings: TrainSettings, log: MetricsLog | None) -> None:
    """Train epoch after epoch until the plan's last, --max-minutes, or a stop request (then save and raise)."""
    p = trainer.progress
    with stop_on_signals() as stop:
        while p.epoch < trainer.recipe.epochs:
            started = time.perf_counter()
            epoch = p.epoch
            try:
                with EpochBar(epoch, trainer.recipe.epochs, trainer.iters_per_epoch, p.batches_done,
                              _bar_on(trainer)) as bar:  # fmt: skip
                    means = trainer.run_epoch(epoch, stop, bar.update)
            except RuntimeError:
                if not stop.requested:
                    raise
                # the signal also ended a loader worker, maybe mid-step: the last epoch's checkpoint stays the state
                where = f"stopped in epoch {epoch + 1}; it resumes from the end of epoch {epoch}"
                raise TrainingInterrupted(where, stop.signum or signal.SIGINT) from None
            if means is None:
                if trainer.dist.is_main:
                    save_state(Path(settings.out) / LAST, trainer.state_dict())
                where = f"stopped in epoch {epoch + 1} after {p.batches_done} batches"
                raise TrainingInterrupted(where, stop.signum or signal.SIGINT)
            _end_epoch(trainer, settings, log, means, started)
            limit = settings.max_minutes
            if limit is not None and _agreed(p.elapsed_s >= limit * 60) and p.epoch < trainer.recipe.epochs:
                LOGGER.info("--max-minutes %g reached after epoch %d: finishing now", limit, p.epoch)
                break


def _fit_plan(trainer: Trainer, settings: TrainSettings) -> None:
    """With --max-minutes, the epochs and lr steps that fit the time left, from the mean epoch time so far."""
    if settings.max_minutes is None:
        return
    p = trainer.progress
    elapsed = main_value(p.elapsed_s)  # every process plans from rank 0's clock, so all stop at the same epoch
    fitted = fit_to_minutes(settings.recipe, trainer.recipe, p.epoch, elapsed, settings.max_minutes)
    if (fitted.epochs, fitted.steps) != (trainer.recipe.epochs, trainer.recipe.steps):
        trainer.recipe = fitted
        LOGGER.info("--max-minutes %g: %d epochs fit at %.0f s per epoch; lr steps after epochs %s",
                    settings.max_minutes, fitted.epochs, elapsed / max(p.epoch, 1),
                    ", ".join(map(str, fitted.steps)) or "none")  # fmt: skip


def _bar_on(trainer: Trainer) -> bool:
    return trainer.dist.is_main and LOGGER.isEnabledFor(logging.INFO)


def _finish(trainer: Trainer, settings: TrainSettings, coco: CocoRecords) -> TrainResult:
    """The final detector folder (EMA weights when --ema), its card, and the hub upload when asked."""
    out, p = Path(settings.out), trainer.progress
    final_ap = {k: v for k, v in (p.records[-1] if p.records else {}).items() if k.startswith("AP")}
    if settings.val_data is not None and not final_ap:
        final_ap = validate(_eval_model(trainer), settings.val_data, settings.val_images or ".",
                            settings.recipe.eval_scale, str(trainer.dist.device))  # fmt: skip
    training = {
        "data": Path(settings.data).name, "train_images": len(coco.records), "num_classes": coco.num_classes,
        "recipe": settings.recipe.name, "epochs": p.epoch, "global_batch": trainer.global_batch,
        "init": settings.model.init_from or settings.model.backbone_checkpoint or "scratch",
        "val_data": Path(settings.val_data).name if settings.val_data else "none", "final_ap": final_ap,
    }  # fmt: skip
    final = plain_copy(_eval_model(trainer))
    folder = write_detector(final, out, training)
    LOGGER.info("the trained detector is in %s (maedet-export / maedet-detect / maedet-eval take it)", folder)
    pushed = push_to_hub(folder, settings.push_to_hub) if settings.push_to_hub else None
    return TrainResult(out, folder, p.epoch, final_ap, pushed)


def _start_folder(settings: TrainSettings) -> None:
    out = Path(settings.out)
    out.mkdir(exist_ok=True)
    atomic_write_text(out / SETTINGS_NAME, json.dumps(settings.to_dict(), indent=2) + "\n", "run settings")


def _train(settings: TrainSettings, dist_env: Distributed, resuming: bool) -> TrainResult:
    trainer, coco = _prepare(settings, dist_env, resuming)
    out = Path(settings.out)
    created = not resuming and not out.exists()
    log = None
    if dist_env.is_main:
        if not resuming:
            _start_folder(settings)
        log = MetricsLog(out, trainer.progress.records)
    try:
        _epochs(trainer, settings, log)
    except MaeDetError:
        if created and dist_env.is_main and not (out / LAST).exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing of this run is worth keeping
        raise
    barrier()
    if not dist_env.is_main:
        return TrainResult(out, None, trainer.progress.epoch, {})
    return _finish(trainer, settings, coco)
