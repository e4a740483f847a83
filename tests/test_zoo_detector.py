"""The GFocalV2 detector: the authors' arithmetic reproduced exactly, checkpoints mapped exactly, errors in one line.

``_authors_reference`` re-derives the authors' inference (mmdetection 2.6 GFocalHead + FPN + multiclass NMS) as
plain functions over their checkpoint's key names — independently of the module under test — so a wrong sigmoid,
prior offset, DGQP input order, FPN extra level or class-channel rule shows up as a difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import maedet
from maedet.errors import MaeDetError
from maedet.zoo import PostprocessConfig
from maedet.zoo.detectors import detector_state_dict
from maedet.zoo.gfl_postprocess import level_points

STRIDES = (8, 16, 32, 64, 128)
KEYS = Path(__file__).parent / "data" / "official_checkpoint_keys"


# ------------------------------------------------------------------------------------------- the reference
def _head_level(state: dict, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' GFocalHead.forward_single: (cls·quality scores, Scale-multiplied box logits)."""

    def tower(branch: str) -> torch.Tensor:
        y = x
        for i in range(4):
            p = f"bbox_head.{branch}_convs.{i}"
            y = F.conv2d(y, state[f"{p}.conv.weight"], padding=1)
            y = F.relu(F.group_norm(y, 32, state[f"{p}.gn.weight"], state[f"{p}.gn.bias"], eps=1e-5))
        return y

    reg = F.conv2d(tower("reg"), state["bbox_head.gfl_reg.weight"], state["bbox_head.gfl_reg.bias"], padding=1)
    bbox_pred = reg * state[f"bbox_head.scales.{level}.scale"]
    n, _, h, w = bbox_pred.shape
    prob = F.softmax(bbox_pred.reshape(n, 4, 17, h, w), dim=2)
    topk = prob.topk(4, dim=2).values
    stat = torch.cat([topk, topk.mean(dim=2, keepdim=True)], dim=2).reshape(n, -1, h, w)
    hidden = F.relu(F.conv2d(stat, state["bbox_head.reg_conf.0.weight"], state["bbox_head.reg_conf.0.bias"]))
    quality = torch.sigmoid(F.conv2d(hidden, state["bbox_head.reg_conf.2.weight"], state["bbox_head.reg_conf.2.bias"]))
    cls = F.conv2d(tower("cls"), state["bbox_head.gfl_cls.weight"], state["bbox_head.gfl_cls.bias"], padding=1)
    return cls.sigmoid() * quality, bbox_pred


def _fpn(state: dict, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    def conv(i: int, kind: str, x: torch.Tensor, **kw) -> torch.Tensor:
        p = f"neck.{kind}.{i}.conv"
        return F.conv2d(x, state[f"{p}.weight"], state[f"{p}.bias"], **kw)

    lat = [conv(i, "lateral_convs", f) for i, f in enumerate(feats)]
    for i in (2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [conv(i, "fpn_convs", lat[i], padding=1) for i in range(3)]
    outs.append(conv(3, "fpn_convs", outs[2], stride=2, padding=1))  # on the P5 output
    outs.append(conv(4, "fpn_convs", outs[3], stride=2, padding=1))
    return outs


def _iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(box[:2], others[:, :2])
    rb = torch.minimum(box[2:], others[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def _greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> list[int]:
    order = scores.argsort(descending=True).tolist()
    keep: list[int] = []
    for i in order:
        if not keep or bool((_iou(boxes[i], boxes[keep]) <= iou_thr).all()):
            keep.append(i)
    return keep


def _authors_reference(state: dict, feats: list[torch.Tensor], img_hw: tuple[int, int], num_classes: int, cfg):
    """get_bboxes for one image: per level top nms_pre, anchor-generator centers, clamp, multiclass NMS, top-k,
    then bbox2result's per-class split, which drops label == num_classes."""
    mlvl_boxes, mlvl_scores = [], []
    for level, x in enumerate(_fpn(state, feats)):
        cls_score, bbox_pred = _head_level(state, x, level)
        stride = STRIDES[level]
        h, w = cls_score.shape[2:]
        scores = cls_score[0].permute(1, 2, 0).reshape(h * w, -1)
        prob = F.softmax(bbox_pred[0].permute(1, 2, 0).reshape(-1, 17), dim=1)
        dist = F.linear(prob, state["bbox_head.integral.project"]).reshape(-1, 4) * stride
        # AnchorGenerator(octave_base_scale=8, ratios=[1], center_offset=0): base anchor centred on (0, 0)
        base = torch.tensor([-4.0, -4.0, 4.0, 4.0]) * stride
        sx = torch.arange(w, dtype=torch.float32) * stride
        sy = torch.arange(h, dtype=torch.float32) * stride
        xx, yy = sx.repeat(h), sy.view(-1, 1).repeat(1, w).view(-1)
        anchors = base[None] + torch.stack([xx, yy, xx, yy], dim=1)
        if scores.shape[0] > cfg.nms_pre:
            top = scores.max(dim=1).values.topk(cfg.nms_pre).indices
            anchors, dist, scores = anchors[top], dist[top], scores[top]
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        boxes = torch.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_hw[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_hw[0])
        mlvl_boxes.append(boxes)
        mlvl_scores.append(scores)
    boxes, scores = torch.cat(mlvl_boxes), torch.cat(mlvl_scores)
    found = []
    for label in range(scores.shape[1]):
        mask = scores[:, label] > cfg.score_thr
        b, s = boxes[mask], scores[mask, label]
        found += [(float(s[i]), label, b[i]) for i in _greedy_nms(b, s, cfg.iou_thr)]
    found = sorted(found, key=lambda t: -t[0])[: cfg.max_per_img]
    return [(s, label, box) for s, label, box in found if label < num_classes]


# ------------------------------------------------------------------------------------------- fixtures
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def small_s(authors_detector_state) -> tuple[maedet.GFocalV2, dict]:
    """MAE-DET-S GFocalV2 with 3 classes (4 class channels, the authors' rule), random authors'-layout weights."""
    state = authors_detector_state("maedet_s_gfl", seed=3, num_classes=NUM_CLASSES)
    state["bbox_head.gfl_cls.bias"] = torch.tensor([0.0, -0.5, -1.0, 1.5])  # the extra channel scores high
    model = maedet.create_detector("maedet_s_gfl", checkpoint={"state_dict": state}, num_classes=NUM_CLASSES)
    return model, state


def _backbone_feats(state: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """C3..C5 from timm's MAE-DET-S loaded by the backbone's own (separately tested) filter."""
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    bb = timm.create_model(
        "maedet_s", features_only=True, out_indices=(-3, -2, -1), pretrained=True,
        pretrained_cfg_overlay=dict(state_dict=backbone, file=None, hf_hub_id=None, url=None),
    )  # fmt: skip
    with torch.no_grad():
        return bb.eval()(x)


# ------------------------------------------------------------------------------------------- arithmetic
def test_prior_points_have_no_offset_and_are_row_major() -> None:
    pts = level_points(2, 3, 16)
    assert pts.tolist() == [[0, 0], [16, 0], [32, 0], [0, 16], [16, 16], [32, 16]]


@pytest.mark.slow
def test_raw_outputs_match_the_authors_head(small_s) -> None:
    model, state = small_s
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model(x)
        ref = [_head_level(state, p, i) for i, p in enumerate(_fpn(state, _backbone_feats(state, x)))]
    assert model.output_names[0] == "scores_p3" and model.output_names[-1] == "distances_p7"
    assert [tuple(o.shape[2:]) for o in outs[:5]] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    for level, (scores, bbox_pred) in enumerate(ref):
        torch.testing.assert_close(outs[level], scores, rtol=1e-5, atol=1e-6)
        n, _, h, w = bbox_pred.shape
        dist = F.linear(F.softmax(bbox_pred.reshape(n, 4, 17, h, w).permute(0, 1, 3, 4, 2), -1), torch.arange(17.0))
        torch.testing.assert_close(outs[5 + level], dist * STRIDES[level], rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("image_hw", [(128, 160), (100, 141)])
def test_detections_match_the_authors_postprocess(small_s, image_hw) -> None:
    """Unpadded image sizes clamp the boxes; the extra channel takes top-k slots and is dropped afterwards."""
    model, state = small_s
    cfg = PostprocessConfig(nms_pre=60, score_thr=0.3, iou_thr=0.6, max_per_img=25)
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    det = model.predict(x, image_sizes=[image_hw], cfg=cfg)[0]
    ref = _authors_reference(state, _backbone_feats(state, x), image_hw, NUM_CLASSES, cfg)
    assert 0 < len(ref) < cfg.max_per_img  # the extra channel really took slots
    assert len(det) == len(ref)
    assert det.labels.tolist() == [label for _, label, _ in ref]
    torch.testing.assert_close(det.scores, torch.tensor([s for s, _, _ in ref]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.boxes, torch.stack([b for _, _, b in ref]), rtol=1e-5, atol=1e-3)
    assert float(det.boxes[:, 2].max()) <= image_hw[1] and float(det.boxes[:, 3].max()) <= image_hw[0]


@pytest.mark.slow
def test_predict_is_per_image(small_s) -> None:
    model, _ = small_s
    cfg = PostprocessConfig(score_thr=0.2, max_per_img=30)
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    sizes = [(64, 96), (50, 70), (64, 33)]
    together = model.predict(x, image_sizes=sizes, cfg=cfg)
    for i in range(3):
        alone = model.predict(x[i : i + 1], image_sizes=sizes[i : i + 1], cfg=cfg)[0]
        assert len(alone) == len(together[i]) > 0
        assert torch.equal(alone.labels, together[i].labels)
        torch.testing.assert_close(alone.boxes, together[i].boxes, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["maedet_s_gfl", "maedet_m_gfl", "maedet_l_gfl"])
def test_authors_checkpoint_maps_every_key_exactly(name: str, authors_detector_state) -> None:
    keys = json.loads((KEYS / f"{name}.json").read_text())
    state = authors_detector_state(name, seed=7)
    model = maedet.create_detector(name, checkpoint={"meta": {"epoch": 73}, "state_dict": state})
    assert model.cls_channels == 81 and model.num_classes == 80
    ours = model.state_dict()
    assert len(ours) == len(keys) == len(state)
    # Independent of the mapping under test: the authors' key order is the module order of both models.
    for (their_key, shape), (our_key, tensor) in zip(keys.items(), ours.items(), strict=True):
        assert list(tensor.shape) == shape, (their_key, our_key)
        assert torch.equal(tensor, state[their_key]), (their_key, our_key)


@pytest.mark.slow
def test_checkpoint_file_round_trip_and_our_own_layout(tmp_path, authors_detector_state) -> None:
    state = authors_detector_state("maedet_s_gfl", seed=9)
    path = tmp_path / "latest.pth"
    torch.save({"meta": {"CLASSES": ("person",)}, "state_dict": state}, path)
    model = maedet.create_detector("maedet_s_gfl", checkpoint=path)
    again = maedet.create_detector("maedet_s_gfl", checkpoint=model.state_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key


def test_backbone_only_checkpoint_is_refused_in_one_sentence(authors_state_dict) -> None:
    with pytest.raises(MaeDetError, match=r"holds a backbone only") as err:
        maedet.create_detector("maedet_s_gfl", checkpoint={"state_dict": authors_state_dict("s")})
    assert "\n" not in str(err.value)


def test_wrong_class_count_is_refused_in_one_sentence(authors_detector_state) -> None:
    state = authors_detector_state("maedet_s_gfl")
    with pytest.raises(MaeDetError, match=r"has 81 class channels, which does not fit num_classes=20") as err:
        maedet.create_detector("maedet_s_gfl", checkpoint=state, num_classes=20)
    assert "\n" not in str(err.value)


def test_missing_unexpected_and_misshapen_keys_are_named(authors_detector_state) -> None:
    model = maedet.create_detector("maedet_s_gfl")
    state = authors_detector_state("maedet_s_gfl")
    del state["neck.fpn_convs.4.conv.bias"]
    state["bbox_head.dcn.weight"] = torch.zeros(1)
    state["bbox_head.reg_conf.0.weight"] = torch.zeros(64, 16, 1, 1)  # DGQP without add_mean
    with pytest.raises(MaeDetError) as err:
        detector_state_dict(state, model)
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing key (neck.extra_convs.1.bias)" in msg
    assert "1 unexpected key (bbox_head.dcn.weight)" in msg
    assert "head.quality.fc1.weight (64, 16, 1, 1) vs model (64, 20, 1, 1)" in msg


# ------------------------------------------------------------------------------------------- other backbones
def test_any_timm_backbone_with_c3_to_c5() -> None:
    model = maedet.create_detector("gfl", backbone="resnet18", num_classes=5, fpn_channels=64)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert model.neck.lateral_convs[0].in_channels == 128  # resnet18 layer2
    assert [o.shape[1] for o in outs] == [6] * 5 + [4] * 5


def test_bad_backbones_and_names_are_refused() -> None:
    with pytest.raises(MaeDetError, match="unknown detector 'maedet_xl_gfl'"):
        maedet.create_detector("maedet_xl_gfl")
    with pytest.raises(MaeDetError, match="fixed backbone"):
        maedet.create_detector("maedet_s_gfl", backbone="resnet18")
    with pytest.raises(MaeDetError, match="must give features at strides"):
        maedet.create_detector("gfl", backbone=torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(MaeDetError, match="multiple of 32"):
        maedet.create_detector("gfl", backbone="resnet18", fpn_channels=48)
    with pytest.raises(MaeDetError, match="no published COCO weights"):
        maedet.create_detector("resnet50_gfl", pretrained=True)


@pytest.mark.slow
def test_a_narrow_head_runs_where_a_level_is_one_pixel() -> None:
    # fpn_channels 32 puts one channel in each GroupNorm group; at 64×64 P6 and P7 are 1×1 (issue 17)
    detector = maedet.create_detector("maedet_s_gfl", fpn_channels=32, num_classes=2).eval()
    with torch.no_grad():
        scores = detector(torch.randn(1, 3, 64, 64))[: len(detector.strides)]
        found = detector.predict(torch.randn(1, 3, 64, 64))
    assert scores[-1].shape[-2:] == (1, 1)
    assert all(torch.isfinite(s).all() for s in scores)
    assert len(found) == 1
    norm = detector.head.cls_tower[0].norm  # the same numbers as torch's GroupNorm wherever torch's takes the input
    x = torch.randn(2, 32, 3, 3)
    torch.testing.assert_close(norm(x), F.group_norm(x, 32, norm.weight, norm.bias, norm.eps))


# ------------------------------------------------------------------------------------------- issue 17: memory
def test_enormous_widths_are_refused_from_shapes_before_building() -> None:
    from maedet.memory import MemoryEstimateError

    with pytest.raises(MemoryEstimateError, match=r"detector 'gfl' has about .* GiB of weights \(counted before"):
        maedet.create_detector("gfl", backbone="resnet18", fpn_channels=2**20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reg_max": 10**9}, "reg_max .* between 1 and 256"),
        ({"postprocess_cfg_nms_pre": 10**9}, "nms_pre and max_per_img must be at most 100,000"),
    ],
)
def test_unreasonable_counts_are_one_sentence(kwargs, message) -> None:
    with pytest.raises(MaeDetError, match=message):
        if "postprocess_cfg_nms_pre" in kwargs:
            PostprocessConfig(nms_pre=kwargs["postprocess_cfg_nms_pre"])
        else:
            maedet.create_detector("gfl", backbone="resnet18", fpn_channels=64, **kwargs)


def test_a_hostile_folder_config_is_one_sentence(tmp_path: Path) -> None:
    """A converted folder whose config.json is nested 100000 deep, or asks for 2^20-wide FPN weights."""
    from maedet.zoo.detector_folder import save_detector_folder

    folder = tmp_path / "det"
    folder.mkdir()
    save_detector_folder(maedet.create_detector("gfl", backbone="resnet18", num_classes=5, fpn_channels=32), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"fpn_channels": 2**20}))
    with pytest.raises(MaeDetError, match="GiB of weights"):
        maedet.create_detector(f"local-dir:{folder}")
    (folder / "config.json").write_text('{"format": "maedet-detector/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MaeDetError, match="nested too deeply"):
        maedet.create_detector(f"local-dir:{folder}")
