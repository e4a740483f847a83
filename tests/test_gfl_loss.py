"""The GFocalV2 training loss (zoo/gfl_loss.py, zoo/gfl_targets.py).

* the authors' numbers: ``tests/data/gfl_loss_case_s0.pt`` holds what their ``GFocalHead.loss`` (GFocalV2's
  mmdetection 2.6) returns for MAE-DET-S outputs on two images — per-level losses, targets and gradients;
* small cases whose values follow by hand from the conventions in docs/training.md;
* gradients of the pieces by ``torch.autograd.gradcheck``; the detector end to end; two gloo processes vs one.
"""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maedet.errors import MaeDetError
from maedet.zoo import create_detector
from maedet.zoo.gfl_loss import (
    aligned_iou,
    bbox_to_distance,
    distribution_focal_loss,
    gfl_loss,
    quality_focal_loss,
)
from maedet.zoo.gfl_targets import assign_targets, atss_assign, level_anchors

CASE = Path(__file__).parent / "data" / "gfl_loss_case_s0.pt"
STRIDES = (8, 16, 32, 64, 128)
TERMS = ("loss_cls", "loss_bbox", "loss_dfl")


def _targets(boxes, labels) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]


def _leaves(tensors) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _run(cls_scores, bbox_preds, targets, pad_sizes, strides, num_classes):
    """Losses, their total's backward done; returns (result, sums, total)."""
    result = gfl_loss(cls_scores, bbox_preds, targets, pad_sizes, strides, num_classes)
    sums = result.sums()
    total = sums["loss_cls"] + sums["loss_bbox"] + sums["loss_dfl"]
    total.backward()
    return result, sums, total


# ---------------------------------------------------------------- the authors' numbers


@pytest.fixture(scope="module")
def case():
    data = torch.load(CASE, weights_only=True)
    cls_scores, bbox_preds = _leaves(data["cls_scores"]), _leaves(data["bbox_preds"])
    targets = _targets(data["gt_boxes"], data["gt_labels"])
    result, sums, total = _run(cls_scores, bbox_preds, targets, data["pad_sizes"].tolist(), STRIDES, 80)
    return data, result, sums, total, cls_scores, bbox_preds


def test_reference_case_losses_per_level_and_sums(case):
    data, result, sums, total, _, _ = case
    for term in TERMS:
        got = torch.stack(getattr(result, term)).detach()
        torch.testing.assert_close(got, data["loss_per_level"][term], rtol=1e-6, atol=0)
        torch.testing.assert_close(sums[term].detach(), data["loss_sums"][term], rtol=1e-6, atol=0)
    torch.testing.assert_close(total.detach(), data["loss_sums"]["loss"], rtol=1e-6, atol=0)
    # the level without a positive (stride 128) gives zero box losses, not NaN
    assert result.loss_bbox[4].item() == 0 and result.loss_dfl[4].item() == 0


def test_reference_case_normalisers(case):
    data, result, *_ = case
    assert result.num_total_samples == int(data["num_total_pos"]) == 57
    assert result.bbox_avg_factor == pytest.approx(float(data["bbox_avg_factor"]), rel=1e-6)


def test_reference_case_targets(case):
    data, result, *_ = case
    for level in range(5):
        assert torch.equal(result.targets.labels[level], data["labels_per_level"][level])
        assert torch.equal(result.targets.label_weights[level], data["label_weights_per_level"][level])
        torch.testing.assert_close(
            result.targets.bbox_targets[level], data["bbox_targets_per_level"][level], rtol=0, atol=0
        )


def test_reference_case_gradients(case):
    data, _, _, _, cls_scores, bbox_preds = case
    for got, want in [
        *zip(cls_scores, data["grad_cls_scores"], strict=True),
        *zip(bbox_preds, data["grad_bbox_preds"], strict=True),
    ]:
        assert got.grad is not None
        scale = float(want.abs().max())
        assert float((got.grad - want).abs().max()) <= 1e-6 * scale, "gradient differs by more than 1e-6 relative"


# ---------------------------------------------------------------- by hand
#
# One level, stride 8, a 1×3 grid: anchors are 64-px squares centred at (0, 0), (8, 0), (16, 0). The box
# [4, -4, 12, 4] (area 64) lies inside all three, so every IoU is 64/4096 = 1/64: threshold = mean + std = 1/64 + 0,
# all three pass the IoU test, and only the centre (8, 0) lies strictly inside the box: anchor 1 is the only positive.
# Zero box logits give uniform bins, so every predicted side is 8 grid units: from the centre (1, 0) (grid units)
# the predicted box is (-7, -8, 9, 8), area 256, containing the box (0.5, -0.5, 1.5, 0.5) of area 1:
# IoU = GIoU = 1/256 (the enclosing box is the prediction). DFL targets are 0.5 on every side (bins 0 and 1, half
# each) and every bin's cross-entropy is log 17.

HAND_STRIDES = (8,)
HAND_SCORES = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.05, 0.25]]  # per anchor, columns 0, 1 and the extra one
HAND_BOX = torch.tensor([[4.0, -4.0, 12.0, 4.0]])


def _hand_outputs(images: int, columns: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor(HAND_SCORES)[:, :columns].t().reshape(1, columns, 1, 3).repeat(images, 1, 1, 1)
    return scores.requires_grad_(True), torch.zeros(images, 68, 1, 3, requires_grad=True)


def _negative(p: float) -> float:
    return -math.log(1 - p) * p * p


def _positive(p: float, s: float) -> float:
    return -(s * math.log(p) + (1 - s) * math.log(1 - p)) * (s - p) ** 2


def _hand_qfl(columns: int, positive: bool) -> float:
    total = sum(_negative(p) for row in HAND_SCORES for p in row[:columns])
    if positive:  # anchor 1, class 1: target IoU 1/256 instead of 0
        total += _positive(0.5, 1 / 256) - _negative(0.5)
    return total


def _no_box() -> dict[str, torch.Tensor]:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


@pytest.mark.parametrize("columns", [3, 2])
def test_one_positive_anchor_and_one_box(columns):
    scores, preds = _hand_outputs(1, columns)
    targets = [{"boxes": HAND_BOX, "labels": torch.tensor([1])}]
    result, sums, _ = _run([scores], [preds], targets, [(8, 24)], HAND_STRIDES, 2)
    assert result.targets.labels[0].tolist() == [[2, 1, 2]]
    assert result.targets.label_weights[0].tolist() == [[1.0, 1.0, 1.0]]
    assert result.num_total_samples == 1
    assert result.bbox_avg_factor == pytest.approx(0.6 if columns == 3 else 0.5)  # max over every column
    assert sums["loss_cls"].item() == pytest.approx(_hand_qfl(columns, True), rel=1e-6)
    assert sums["loss_bbox"].item() == pytest.approx(2 * (1 - 1 / 256), rel=1e-6)
    assert sums["loss_dfl"].item() == pytest.approx(0.25 * math.log(17), rel=1e-6)


def test_an_image_without_boxes_counts_one_and_is_all_background():
    scores, preds = _hand_outputs(2)
    targets = [{"boxes": HAND_BOX, "labels": torch.tensor([1])}, _no_box()]
    result, sums, _ = _run([scores], [preds], targets, [(8, 24), (8, 24)], HAND_STRIDES, 2)
    assert result.targets.labels[0].tolist() == [[2, 1, 2], [2, 2, 2]]
    assert result.num_total_samples == 2  # max(1, 1) + max(0, 1)
    expected = (_hand_qfl(3, True) + _hand_qfl(3, False)) / 2
    assert sums["loss_cls"].item() == pytest.approx(expected, rel=1e-6)
    assert sums["loss_bbox"].item() == pytest.approx(2 * (1 - 1 / 256), rel=1e-6)


def test_a_batch_without_boxes_gives_zero_box_losses_not_nan():
    scores, preds = _hand_outputs(2)
    result, sums, total = _run([scores], [preds], [_no_box(), _no_box()], [(8, 24), (8, 24)], HAND_STRIDES, 2)
    assert result.bbox_avg_factor == 0
    assert sums["loss_bbox"].item() == 0 and sums["loss_dfl"].item() == 0
    assert sums["loss_cls"].item() == pytest.approx(_hand_qfl(3, False), rel=1e-6)  # (Q + Q) / 2
    assert torch.isfinite(total) and torch.isfinite(scores.grad).all()
    assert preds.grad is not None and not preds.grad.any()  # in the graph, with zero gradient


def test_padding_cells_are_background_with_weight_zero():
    scores, preds = _hand_outputs(1)
    targets = [{"boxes": HAND_BOX, "labels": torch.tensor([1])}]
    # padded width 9 → ceil(9 / 8) = 2 valid columns: anchor 2 is ignored, the other two keep their roles
    result, *_ = _run([scores], [preds], targets, [(8, 9)], HAND_STRIDES, 2)
    assert result.targets.labels[0].tolist() == [[2, 1, 2]]
    assert result.targets.label_weights[0].tolist() == [[1.0, 1.0, 0.0]]


def test_one_anchor_and_one_box_has_no_positive():
    # one candidate: the unbiased std of a single IoU is NaN, so the threshold is NaN and nothing passes it
    scores = torch.full((1, 3, 1, 1), 0.3, requires_grad=True)
    preds = torch.zeros(1, 68, 1, 1, requires_grad=True)
    targets = [{"boxes": torch.tensor([[-4.0, -4.0, 4.0, 4.0]]), "labels": torch.tensor([0])}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the degrees of freedom
        result, sums, _ = _run([scores], [preds], targets, [(8, 8)], HAND_STRIDES, 2)
    assert result.targets.labels[0].tolist() == [[2]]
    assert sums["loss_cls"].item() == pytest.approx(3 * _negative(0.3), rel=1e-6)
    assert sums["loss_bbox"].item() == 0


def test_dfl_target_between_two_bins():
    # logits 0 except bin 3 = log 2 and bin 4 = log 3: softmax denominator 15 + 2 + 3 = 20, p3 = 0.1, p4 = 0.15;
    # target 3.3 → 0.7 · CE(bin 3) + 0.3 · CE(bin 4) = 0.7 · log 10 + 0.3 · log(20/3)
    logits = torch.zeros(1, 17)
    logits[0, 3], logits[0, 4] = math.log(2), math.log(3)
    got = distribution_focal_loss(logits, torch.tensor([3.3])).item()
    assert got == pytest.approx(0.7 * math.log(10) + 0.3 * math.log(20 / 3), rel=1e-6)


def test_dfl_targets_are_clamped_to_reg_max_minus_a_tenth():
    points = torch.tensor([[10.0, 10.0]])
    boxes = torch.tensor([[-20.0, 12.0, 13.25, 40.0]])  # sides 30, -2, 3.25, 30
    got = bbox_to_distance(points, boxes, reg_max=16)
    torch.testing.assert_close(got, torch.tensor([[15.9, 0.0, 3.25, 15.9]]))


@pytest.mark.parametrize(
    ("box1", "box2", "iou", "giou"),
    [
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),  # overlap 1, union 7, enclosing 9
        ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3),  # apart: union 2, enclosing 3
        ([0, 0, 4, 2], [0, 0, 4, 2], 1.0, 1.0),
        ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),  # inside: enclosing = union
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0, 0.0),  # empty: union and enclosing clamp to 1e-6
    ],
)
def test_iou_and_giou_of_known_boxes(box1, box2, iou, giou):
    b1, b2 = torch.tensor([box1], dtype=torch.float64), torch.tensor([box2], dtype=torch.float64)
    assert aligned_iou(b1, b2).item() == pytest.approx(iou, abs=1e-12)
    assert aligned_iou(b1, b2, giou=True).item() == pytest.approx(giou, abs=1e-12)


# ---------------------------------------------------------------- ATSS on tiny grids


def _grid(height: int, width: int, stride: int = 8) -> torch.Tensor:
    return level_anchors(height, width, stride)


def test_atss_excludes_anchors_on_the_box_border():
    # 3×3 grid: the box [0, 0, 16, 16] lies inside all nine 64-px anchors (IoU 256/4096 each, threshold = that),
    # but eight centres sit on its border (a side distance of 0, not > 0.01): only the middle anchor (8, 8) is kept
    assigned = atss_assign(_grid(3, 3), [9], torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert assigned.tolist() == [-1, -1, -1, -1, 0, -1, -1, -1, -1]


def test_atss_threshold_is_mean_plus_unbiased_std_over_the_nine_nearest():
    # 4×4 grid, box [22, 6, 58, 42] (centre (40, 24)). Worked out independently of torch: the nine nearest centres,
    # their IoUs, mean + sample std (n − 1) as threshold, and the centre test.
    anchors, box = _grid(4, 4), [22.0, 6.0, 58.0, 42.0]
    centres = [(x * 8.0, y * 8.0) for y in range(4) for x in range(4)]
    nearest = sorted(range(16), key=lambda i: (math.dist(centres[i], (40.0, 24.0)), i))[:9]

    def iou(c):
        ix = max(0.0, min(c[0] + 32, box[2]) - max(c[0] - 32, box[0]))
        iy = max(0.0, min(c[1] + 32, box[3]) - max(c[1] - 32, box[1]))
        return ix * iy / (64 * 64 + 36 * 36 - ix * iy)

    ious = [iou(centres[i]) for i in nearest]
    inside = [i for i in nearest if box[0] < centres[i][0] < box[2] and box[1] < centres[i][1] < box[3]]
    unbiased = statistics.mean(ious) + statistics.stdev(ious)
    biased = statistics.mean(ious) + statistics.pstdev(ious)
    expected = sorted(i for i, v in zip(nearest, ious, strict=True) if v >= unbiased and i in inside)
    assert expected == [11, 15]  # (24, 16) and (24, 24)
    assert sorted(i for i, v in zip(nearest, ious, strict=True) if v >= biased and i in inside) == [7, 11, 15]
    assigned = atss_assign(anchors, [16], torch.tensor([box]))
    assert (assigned >= 0).nonzero().squeeze(1).tolist() == expected


@pytest.mark.parametrize(("box", "positives"), [([1.0, 1.0, 15.0, 15.0], [4]), ([9.0, 9.0, 23.0, 23.0], [])])
def test_atss_runs_on_the_valid_anchors_only_with_k_min_of_nine_and_their_count(box, positives):
    # a 3×3 grid padded to 16×16: ceil(16 / 8) = 2 → the 2×2 top-left cells are valid, k = min(9, 4) = 4. Both
    # boxes lie inside every anchor (equal IoUs, all pass the threshold). (8, 8) is strictly inside the first box;
    # the second box's only inside centre, (16, 16), is a padding cell, so it gets no positive at all.
    got = assign_targets([(3, 3)], (8,), [torch.tensor([box])], [torch.tensor([1])], [(16, 16)], 2, torch.device("cpu"))
    assert (got.labels[0][0] < 2).nonzero().squeeze(1).tolist() == positives
    assert got.label_weights[0][0].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert got.num_pos == [len(positives)]


def test_atss_gives_a_shared_anchor_to_the_larger_iou_and_ties_to_the_first_box():
    anchors = _grid(3, 3)
    small, large = [6.0, 6.0, 10.0, 10.0], [0.5, 0.5, 15.5, 15.5]  # both claim the middle anchor (8, 8)
    assert atss_assign(anchors, [9], torch.tensor([small, large]))[4].item() == 1
    assert atss_assign(anchors, [9], torch.tensor([large, small]))[4].item() == 0
    assert atss_assign(anchors, [9], torch.tensor([large, large]))[4].item() == 0  # equal IoU: the first box


def test_atss_breaks_distance_ties_by_anchor_order():
    # a box centred at (4, 4) is equally far from the four centres of a 2×2 grid; with k = 3 the first three in
    # row-major order are the candidates (whatever torch's top-k does with ties). The box lies inside every anchor
    # (equal IoUs, std 0) and holds every centre, so exactly the candidates are positive.
    assigned = atss_assign(_grid(2, 2), [4], torch.tensor([[-4.0, -4.0, 12.0, 12.0]]), topk=3)
    assert assigned.tolist() == [0, 0, 0, -1]


# ---------------------------------------------------------------- gradients of the pieces


def test_gradcheck_quality_focal_loss():
    gen = torch.Generator().manual_seed(0)
    scores = (torch.rand(6, 4, generator=gen, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    labels = torch.tensor([0, 3, 2, 3, 1, 2])  # 3 = background for 3 classes (+ the extra column)
    quality = torch.rand(6, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: quality_focal_loss(s, labels, quality, 3), (scores,))


def test_gradcheck_distribution_focal_loss():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 17, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.25, 7.5, 15.9], dtype=torch.float64)  # low, middle, clamped top
    assert torch.autograd.gradcheck(lambda x: distribution_focal_loss(x, target), (logits,), fast_mode=True)


def test_gradcheck_giou():
    gen = torch.Generator().manual_seed(2)
    corner = torch.rand(5, 2, generator=gen, dtype=torch.float64) * 10
    pred = torch.cat([corner, corner + 1 + torch.rand(5, 2, generator=gen, dtype=torch.float64) * 8], 1)
    target = pred.detach() + torch.randn(5, 4, generator=gen, dtype=torch.float64)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: aligned_iou(p, target, giou=True), (pred,))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("targets", "pads", "match"),
    [
        ([{"boxes": HAND_BOX, "labels": torch.tensor([1])}] * 2, [(8, 24)], "one target per image"),
        ([{"boxes": HAND_BOX}], [(8, 24)], "'boxes' and 'labels'"),
        ([{"boxes": HAND_BOX, "labels": torch.tensor([2])}], [(8, 24)], r"labels must be integers in \[0, 2\)"),
        ([{"boxes": HAND_BOX, "labels": torch.tensor([1.0])}], [(8, 24)], "labels must be integers"),
        ([{"boxes": HAND_BOX[:, :3], "labels": torch.tensor([1])}], [(8, 24)], r"boxes must be \(N, 4\)"),
        ([{"boxes": HAND_BOX * math.inf, "labels": torch.tensor([1])}], [(8, 24)], "finite"),
        ([{"boxes": HAND_BOX, "labels": torch.tensor([1])}], [(8, 24, 1)], "one positive"),
        ([{"boxes": HAND_BOX, "labels": torch.tensor([1])}], [(8, 32)], "must fit the 8×24 batch"),
    ],
)
def test_bad_targets_are_one_sentence(targets, pads, match):
    scores, preds = _hand_outputs(1)
    with pytest.raises(MaeDetError, match=match):
        gfl_loss([scores], [preds], targets, pads, HAND_STRIDES, 2, input_size=(8, 24))


# ---------------------------------------------------------------- the detector end to end


@pytest.fixture(scope="module")
def small_detector():
    torch.manual_seed(0)
    return create_detector("gfl", backbone="maedet_s", fpn_channels=64, num_classes=3)


@pytest.mark.slow
def test_forward_train_matches_forward(small_detector):
    det = small_detector.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        scores, logits = det.forward_train(x)
        raw = det(x)
    for level, stride in enumerate(det.strides):
        assert torch.equal(scores[level], raw[level])
        prob = logits[level].unflatten(1, (4, 17)).softmax(dim=2)
        distances = det.head.integral(prob) * stride
        assert torch.equal(distances, raw[len(det.strides) + level])


@pytest.mark.slow
def test_detector_loss_end_to_end_reaches_backbone_neck_and_head(small_detector):
    det = small_detector.train()
    det.zero_grad()
    x = torch.randn(2, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2])},
        _no_box(),
    ]
    losses = det.loss(x, targets, pad_sizes=[(64, 96), (64, 64)])
    assert set(losses) == set(TERMS)
    assert all(v.ndim == 0 and torch.isfinite(v) and v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = {name: p.grad for name, p in det.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for part in ("backbone.", "neck.", "head."):
        assert any(g.any() for name, g in grads.items() if name.startswith(part)), f"no gradient reaches {part}"
    with pytest.raises(MaeDetError, match="must fit"):
        det.loss(x, targets, pad_sizes=[(64, 96), (96, 64)])


# ---------------------------------------------------------------- two processes equal one


def _random_batch(images: int, seed: int = 0):
    """Head outputs for 64×96 inputs (5 levels) and 0..4 random boxes per image, some images padded narrower."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    scores = [torch.rand(images, 4, h, w, generator=gen) * 0.9 + 0.05 for h, w in sizes]
    logits = [torch.randn(images, 68, h, w, generator=gen) for h, w in sizes]
    targets, pads = [], []
    for i in range(images):
        n = i % 5
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([60.0, 40.0])
        wh = torch.rand(n, 2, generator=gen) * 30 + 4
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, 3, (n,), generator=gen)})
        pads.append((64, 96 if i % 2 == 0 else 64))
    return scores, logits, targets, pads


def _loss_and_grads(scores, logits, targets, pads):
    scores, logits = _leaves(scores), _leaves(logits)
    result, sums, _ = _run(scores, logits, targets, pads, STRIDES, 3)
    values = {k: v.detach() for k, v in sums.items()}
    return result, values, [t.grad for t in scores], [t.grad for t in logits]


def _ddp_worker(rank: int, world: int, rendezvous: str, out_dir: str, images: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        scores, logits, targets, pads = _random_batch(images)
        part = slice(rank * images // world, (rank + 1) * images // world)
        result, values, g_scores, g_logits = _loss_and_grads(
            [s[part] for s in scores], [x[part] for x in logits], targets[part], pads[part]
        )
        normalisers = (result.num_total_samples, result.bbox_avg_factor)
        torch.save({"losses": values, "normalisers": normalisers, "grads": g_scores + g_logits}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_whole_batch(tmp_path):
    images, world = 4, 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path), images), nprocs=world)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    result, values, g_scores, g_logits = _loss_and_grads(*_random_batch(images))
    num_pos = result.targets.num_pos
    assert num_pos[0] == 0 and result.num_total_samples == sum(max(n, 1) for n in num_pos)
    for rank in ranks:  # each process sees the global averages
        assert rank["normalisers"][0] * world == pytest.approx(result.num_total_samples, rel=1e-6)
        assert rank["normalisers"][1] * world == pytest.approx(result.bbox_avg_factor, rel=1e-6)
    for term in TERMS:  # DDP averages the gradients: the mean of the processes' losses is the whole batch's
        mean = sum(rank["losses"][term] for rank in ranks) / world
        torch.testing.assert_close(mean, values[term], rtol=1e-5, atol=1e-7)
    per_rank = images // world
    for i, whole in enumerate(g_scores + g_logits):
        for r, rank in enumerate(ranks):
            torch.testing.assert_close(
                rank["grads"][i] / world, whole[r * per_rank : (r + 1) * per_rank], rtol=1e-5, atol=1e-8
            )


def test_bfloat16_outputs_give_float32_losses_even_under_autocast():
    scores, logits, targets, pads = _random_batch(2, seed=3)
    low_scores, low_logits = [s.bfloat16() for s in scores], [x.bfloat16() for x in logits]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gfl_loss(low_scores, low_logits, targets, pads, STRIDES, 3).sums()
    want = gfl_loss([s.float() for s in low_scores], [x.float() for x in low_logits], targets, pads, STRIDES, 3).sums()
    for term in TERMS:
        assert got[term].dtype == torch.float32
        assert torch.equal(got[term], want[term])
