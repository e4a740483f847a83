"""The schedule, the recipes' numbers and the SyncBN conversion of maedet-train."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from maedet.errors import MaeDetError
from maedet.train import RECIPES, recipe_with, scaled_lr
from maedet.train.schedule import continue_plan, fit_to_minutes, lr_factor, make_scheduler
from maedet.train.syncbn import CpuSyncBatchNorm, convert_sync_batchnorm


def test_authors_recipe_values():
    r = RECIPES["maedet-6x"]
    assert (r.lr, r.momentum, r.weight_decay) == (0.02, 0.9, 1e-4)
    assert (r.warmup_iters, r.warmup_ratio, r.steps, r.epochs) == (7330, 0.1, (65, 71), 73)
    assert (r.short_range, r.long_max, r.flip, r.batch_per_process, r.sync_bn) == ((480, 960), 1333, 0.5, 2, True)
    assert r.eval_scale == (1333, 800)


def test_max_minutes_fits_the_epochs_and_keeps_the_steps_fractions():
    r = recipe_with("demo", epochs=11, steps=(9, 10))
    slow = fit_to_minutes(r, r, epochs_done=1, seconds=200.0, minutes=20)  # 200 s per epoch: 6 fit in 20 minutes
    assert (slow.epochs, slow.steps) == (6, (5, 5))
    fast = fit_to_minutes(r, r, epochs_done=2, seconds=100.0, minutes=20)  # 50 s per epoch: 24 fit
    assert (fast.epochs, fast.steps) == (24, (20, 22))
    assert fit_to_minutes(r, r, epochs_done=3, seconds=3000.0, minutes=20).epochs == 3  # never fewer than done


def test_a_passed_lr_step_stays_and_a_coming_one_is_never_in_the_past():
    r = recipe_with("demo", epochs=11, steps=(9, 10))
    decayed = fit_to_minutes(r, r, epochs_done=9, seconds=9 * 100.0, minutes=20)  # 12 fit: steps 10, 11
    assert decayed.steps == (10, 11)
    after = replace(r, epochs=11, steps=(9, 10))  # the plan in force when epoch 10 ended (epoch 10 ran decayed)
    faster = fit_to_minutes(r, after, epochs_done=10, seconds=10 * 60.0, minutes=20)  # 20 fit now
    assert faster.steps == (9, 18) and faster.epochs == 20  # the passed step stays: the rate never rises again
    slower = fit_to_minutes(r, replace(r, steps=(12, 13)), epochs_done=9, seconds=9 * 120.0, minutes=20)
    assert slower.steps == (9, 9)  # 10 fit: both coming steps land now, none before epoch 9


def test_resuming_after_the_time_ran_out_continues_the_recipe_with_the_steps_taken():
    r = recipe_with("demo", epochs=11, steps=(9, 10))
    fitted = replace(r, epochs=6, steps=(5, 5))  # what --max-minutes planned on a slow machine; 6 epochs done
    assert continue_plan(r, fitted, epochs_done=6) == replace(r, steps=(5, 5))  # 11 epochs, the rate stays low
    early = replace(r, epochs=4, steps=(9, 10))  # ended before any step: the recipe's own steps
    assert continue_plan(r, early, epochs_done=4) == r


@pytest.mark.parametrize(("batch", "lr"), [(16, 0.02), (8, 0.01), (64, 0.08), (2, 0.0025)])
def test_lr_scales_linearly_with_the_global_batch(batch, lr):
    assert scaled_lr(RECIPES["maedet-6x"], batch) == pytest.approx(lr)


def test_warmup_is_mmcv_linear_from_the_ratio():
    r = RECIPES["maedet-6x"]
    assert lr_factor(0, 1000, r) == pytest.approx(0.1)
    assert lr_factor(3665, 1000, r) == pytest.approx(1 - 0.5 * 0.9)  # halfway: 0.55
    assert lr_factor(7329, 1000, r) == pytest.approx(1 - (1 / 7330) * 0.9)
    assert lr_factor(7330, 1000, r) == 1.0


def test_steps_multiply_by_gamma_from_the_given_epochs():
    r = RECIPES["maedet-6x"]
    per_epoch = 7330  # warm-up over after the first epoch
    assert lr_factor(64 * per_epoch + per_epoch - 1, per_epoch, r) == 1.0  # last iteration of epoch 65 (0-based 64)
    assert lr_factor(65 * per_epoch, per_epoch, r) == pytest.approx(0.1)
    assert lr_factor(71 * per_epoch, per_epoch, r) == pytest.approx(0.01)
    assert lr_factor(72 * per_epoch + 5, per_epoch, r) == pytest.approx(0.01)


def test_scheduler_follows_the_formula_step_by_step():
    r = recipe_with("demo", warmup_iters=4, steps=(2,), epochs=3)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = make_scheduler(opt, 3, lambda: r)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * lr_factor(i, 3, r) for i in range(9)]
    assert seen == pytest.approx(expected)
    assert seen[6] == pytest.approx(0.5 * 0.1)  # epoch 2 (0-based) starts at iteration 6


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("lr", -1.0, "lr must be positive"), ("steps", (5, 3), "must increase"), ("flip", 2.0, "flip probability"),
     ("short_range", (100, 50), "short-side range"), ("fpn_channels", 48, "multiple of 32"),
     ("batch_per_process", 0, "batch per process"), ("epochs", 0, "epochs")],
)  # fmt: skip
def test_bad_recipe_numbers_are_one_sentence(field, value, words):
    with pytest.raises(MaeDetError, match=words):
        recipe_with("maedet-6x", **{field: value})


def test_unknown_recipe_is_refused():
    with pytest.raises(MaeDetError, match="unknown recipe"):
        recipe_with("yolo-300e")


def test_sync_batchnorm_conversion_keeps_weights_and_other_norms():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.GroupNorm(4, 8))
    with torch.no_grad():
        model[1].weight.uniform_()
        model[1].running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model)
    assert type(converted[1]) is CpuSyncBatchNorm
    assert type(converted[3]) is nn.GroupNorm
    after = converted.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    on_cuda = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(8)), "cuda")  # torch's own class there
    assert type(on_cuda[0]) is nn.SyncBatchNorm


def test_sync_batchnorm_alone_equals_batchnorm():
    """Without a process group it is plain batch norm: same output, same running statistics."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), bn(x))
    torch.testing.assert_close(sync.running_var, bn.running_var)
