"""Detector export: raw outputs and end-to-end NMS graphs match PyTorch in ONNX Runtime, per image, at any size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import maedet
from maedet.export import export_detector_onnx
from maedet.export.check import to_pixels
from maedet.export.detector import resolve_detector
from maedet.export.detector_graph import DETECTION_OUTPUTS, NmsPostprocess, RawOutputs, unpad_detections
from maedet.export.errors import ExportError
from maedet.export.metadata import read_metadata
from maedet.zoo import PostprocessConfig, Stage, Stem, Structure

pytestmark = pytest.mark.slow  # see make test-fast

TINY = Structure(
    Stem(3, 16, 2, 3),
    (Stage(16, 24, 2, 3, 1, 16), Stage(24, 48, 2, 3, 1, 16), Stage(48, 64, 2, 3, 1, 24), Stage(64, 96, 2, 3, 1, 32)),
)
CFG = PostprocessConfig(nms_pre=200, score_thr=0.3, iou_thr=0.6, max_per_img=40)


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(2)


def tiny_detector(seed: int = 0) -> maedet.GFocalV2:
    """3 classes + the authors' extra channel, biased so that many points pass and the extra channel takes slots."""
    torch.manual_seed(seed)
    model = maedet.create_detector("gfl", structure=TINY, num_classes=3, fpn_channels=64, postprocess_cfg=CFG)
    with torch.no_grad():
        model.head.cls_out.weight.normal_(0, 0.05)
        model.head.cls_out.bias.copy_(torch.tensor([0.5, 0.0, -0.5, 0.8]))
        model.head.reg_out.weight.normal_(0, 0.05)
    return model.eval()


def _images(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _run(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x.numpy()}), strict=True))


def _assert_same(onnx_out: dict[str, np.ndarray], expected: list) -> None:
    got = unpad_detections(*(onnx_out[n] for n in DETECTION_OUTPUTS))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert len(g) == len(e)
        assert torch.equal(g.labels, e.labels)
        assert torch.allclose(g.boxes, e.boxes, rtol=1e-3, atol=1e-3)
        assert torch.allclose(g.scores, e.scores, atol=1e-5)


@pytest.fixture(scope="module")
def nms_file(tmp_path_factory):
    model = tiny_detector()
    path = tmp_path_factory.mktemp("det") / "tiny.onnx"
    result = export_detector_onnx(model, path, input_size=(128, 160), batch=2, dynamic=True)
    return model, path, result


def test_export_with_nms_passes_its_own_check(nms_file) -> None:
    _, path, result = nms_file
    assert result.output_names == list(DETECTION_OUTPUTS)
    check = result.check
    assert check.passed, check.to_dict()
    assert check.raw.passed and all(o.max_rel <= 1e-4 for o in check.raw.outputs.values())
    assert check.detections.detections > 20 and check.detections.passed
    assert check.probe.detections > 20 and check.probe.passed
    meta = read_metadata(path)
    assert meta["outputs"] == "detections" and meta["num_classes"] == 3 and meta["cls_channels"] == 4
    assert meta["postprocess"] == {"nms_pre": 200, "score_thr": 0.3, "iou_thr": 0.6, "max_per_img": 40}
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "NonMaxSuppression" for n in graph.node) == 1


@pytest.mark.parametrize(("batch", "h", "w"), [(3, 96, 224), (1, 160, 64)])
def test_dynamic_batch_and_size_match_pytorch_predict(nms_file, batch, h, w) -> None:
    model, path, _ = nms_file
    x = _images(batch, h, w, seed=h + w)
    expected = resolve_detector(model).predict(x)
    assert all(0 < len(d) < CFG.max_per_img for d in expected)  # the extra channel's slots were dropped
    _assert_same(_run(path, x), expected)


def test_every_image_of_a_batch_gets_its_own_detections(nms_file) -> None:
    _, path, _ = nms_file
    x = _images(3, 128, 160, seed=11)
    together = _run(path, x)
    per_image = unpad_detections(*(together[n] for n in DETECTION_OUTPUTS))
    assert not torch.equal(per_image[0].boxes, per_image[1].boxes)
    for i in range(3):
        alone = unpad_detections(*(_run(path, x[i : i + 1])[n] for n in DETECTION_OUTPUTS))[0]
        assert len(alone) == len(per_image[i]) > 0
        assert torch.equal(alone.labels, per_image[i].labels)
        assert torch.allclose(alone.boxes, per_image[i].boxes, atol=1e-4)
    assert int(together["num_dets"][1, 0]) < CFG.max_per_img
    n = int(together["num_dets"][1, 0])
    assert (together["labels"][1, n:] == -1).all() and (together["boxes"][1, n:] == 0).all()


def test_raw_outputs_without_nms(tmp_path) -> None:
    model = tiny_detector(1)
    path = tmp_path / "raw.onnx"
    result = export_detector_onnx(model, path, input_size=(64, 96), nms=False, dynamic=True)
    assert result.output_names == list(model.output_names)
    assert result.check.passed and result.check.detections is None
    x = _images(2, 96, 128, seed=3)
    got = _run(path, x)
    with torch.no_grad():
        ref = resolve_detector(model)(x)
    for name, tensor in zip(model.output_names, ref, strict=True):
        np.testing.assert_allclose(got[name], tensor.numpy(), rtol=1e-4, atol=1e-5 * float(tensor.abs().max()))
    assert read_metadata(path)["outputs"] == "raw"


def test_embedded_preprocessing_takes_uint8_pixels(tmp_path) -> None:
    model = tiny_detector(2)
    path = tmp_path / "u8.onnx"
    result = export_detector_onnx(model, path, input_size=(64, 96), embed_preprocess=True, dynamic=True)
    assert result.check.passed
    pixels = torch.from_numpy(to_pixels(_images(2, 64, 96, seed=5).clamp(-2, 2).numpy(), model.mean, model.std))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    outs = dict(zip(DETECTION_OUTPUTS, session.run(list(DETECTION_OUTPUTS), {"input": pixels.numpy()}), strict=True))
    deploy = resolve_detector(model)
    with torch.no_grad():
        raw = RawOutputs(deploy, embed_preprocess=True, with_input_hw=True)(pixels)
        ref = NmsPostprocess(deploy.strides, deploy.num_classes, CFG)(*raw)
    _assert_same(outs, unpad_detections(*ref))
    assert int(outs["num_dets"].sum()) > 0


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_lower_precision_lowers_the_network_only(tmp_path, precision) -> None:
    model = tiny_detector(3)
    path = tmp_path / f"{precision}.onnx"
    calib = {"calib_batches": 2} if precision == "int8" else {}
    result = export_detector_onnx(model, path, input_size=(64, 96), precision=precision, **calib)
    assert result.check.raw.passed, result.check.to_dict()
    graph = onnx.load(str(path)).graph
    nms = next(n for n in graph.node if n.op_type == "NonMaxSuppression")
    assert nms.name.startswith("postprocess/")
    if precision == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"


def test_authors_checkpoint_through_the_exported_file(tmp_path, authors_detector_state) -> None:
    """The authors' layout (81 channels, every norm randomised) → same detections in PyTorch and ONNX Runtime."""
    state = authors_detector_state("maedet_s_gfl", seed=5)
    state["bbox_head.gfl_cls.bias"] = torch.full((81,), 1.0)
    ckpt = tmp_path / "latest.pth"
    torch.save({"state_dict": state}, ckpt)
    result = export_detector_onnx("maedet_s_gfl", tmp_path / "s.onnx", checkpoint=ckpt, input_size=(96, 128))
    assert result.check.passed, result.check.to_dict()
    assert result.check.detections.detections > 0
    x = _images(1, 96, 128, seed=8)
    expected = maedet.create_detector("maedet_s_gfl", checkpoint=ckpt).predict(x)
    _assert_same(_run(tmp_path / "s.onnx", x), expected)


def test_bad_requests_are_one_sentence(tmp_path) -> None:
    with pytest.raises(ExportError, match=r"multiples of 32"):
        export_detector_onnx(tiny_detector(), tmp_path / "x.onnx", input_size=(100, 160))
    with pytest.raises(ExportError, match=r"precision must be one of"):
        export_detector_onnx(tiny_detector(), tmp_path / "x.onnx", input_size=(64, 64), precision="int4")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exports_a_named_detector(tmp_path, capsys, authors_detector_state) -> None:
    from maedet.export.cli import main

    ckpt = tmp_path / "latest.pth"
    state = authors_detector_state("maedet_s_gfl", seed=6)
    state["bbox_head.gfl_cls.bias"] = torch.full((81,), 0.5)
    torch.save({"state_dict": state}, ckpt)
    out = tmp_path / "det.onnx"
    argv = ["maedet_s_gfl", "--checkpoint", str(ckpt), "--onnx", str(out), "--input-size", "64", "96", "--json"]
    assert main([*argv, "--max-det", "30", "--dynamic"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output_names"] == list(DETECTION_OUTPUTS) and summary["check"]["passed"]
    assert summary["check"]["detections"]["detections"] > 0
    meta = read_metadata(out)
    assert meta["model_name"] == "maedet_s_gfl" and meta["postprocess"]["max_per_img"] == 30 and meta["dynamic"]
    assert main(["--info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "detection"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["maedet_s_gfl", "--logits", "--onnx", "x.onnx"], "--logits apply to backbones, not to detectors"),
        (["maedet_s", "--no-nms", "--onnx", "x.onnx"], "--no-nms apply to detectors"),
        (["gfl", "--onnx", "x.onnx"], "needs --structure FILE"),
    ],
)
def test_cli_refuses_mixed_options_in_one_sentence(tmp_path, capsys, argv, expected) -> None:
    from maedet.export.cli import main

    assert main([*argv[:-1], str(tmp_path / argv[-1])]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_detector_export_speaks_like_every_tool(tmp_path, capsys, caplog, authors_detector_state) -> None:
    """Issue 17: a detector file carries the backbones' identity metadata; --int8-mode cpu builds the fast ONNX
    Runtime layout; -q silences the log (no timestamped rich lines, no ONNX Runtime quantizer notices); the size
    takes the shared grammar (64x96); the check ends in one sentence with the exit-code rule."""
    import hashlib
    import logging

    from maedet.export.cli import main

    ckpt = tmp_path / "latest.pth"
    torch.save({"state_dict": authors_detector_state("maedet_s_gfl", seed=7)}, ckpt)
    out = tmp_path / "det8.onnx"
    argv = ["maedet_s_gfl", "--checkpoint", str(ckpt), "--onnx", str(out), "--input-size", "64x96", "--json", "-q"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--int8", "--int8-mode", "cpu", "--calib-batches", "1"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]  # ~120 "Expected bias ..." lines before
    assert "exporting" not in captured.err and "detector_cli.py" not in captured.err  # -q: no log lines at all
    assert "exit 1 only when the raw outputs miss their tolerance" in summary["check"]["summary"]
    meta = read_metadata(out)
    assert meta["input_size"] == [3, 64, 96] and meta["int8_mode"] == "cpu" and meta["precision"] == "int8"
    assert meta["weights"] == str(ckpt) and meta["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["color_order"] == "RGB" and meta["pixel_scale"] == "1/255"
    zero_points = {i.name: i for i in onnx.load(str(out)).graph.initializer if i.name.endswith("zero_point")}
    assert onnx.TensorProto.UINT8 in {t.data_type for t in zero_points.values()}  # uint8 activations: the CPU layout


def test_lower_precision_check_says_what_differs_in_one_sentence(tmp_path) -> None:
    """fp16: how many detections match (IoU, class), how far their scores are, and that it is expected."""
    model = tiny_detector(3)
    result = export_detector_onnx(model, tmp_path / "h.onnx", input_size=(64, 96), precision="fp16")
    sentence = result.check.sentence()
    found = result.check.detections
    assert f"fp16: {found.matched} of {found.detections} detections match PyTorch's (IoU ≥ 0.9" in sentence
    assert "expected for fp16" in sentence and found.detections > 0 and sentence.endswith(".")
    assert result.check.to_dict()["summary"] == sentence


def test_compare_detections_pairs_boxes_by_iou_and_class() -> None:
    from maedet.export.detector_check import compare_detections

    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]]], dtype=np.float32)
    ref = {"num_dets": np.array([[3]]), "boxes": boxes, "scores": np.array([[0.9, 0.8, 0.7]]),
           "labels": np.array([[1, 2, 3]])}  # fmt: skip
    moved = {**ref, "boxes": boxes + np.array([0, 0, 0, 30], dtype=np.float32), "scores": ref["scores"] + 0.01}
    moved["boxes"][0, :2] = boxes[0, :2]  # the first two boxes barely move, the third is twice as tall
    moved["boxes"][0, 0, 3], moved["boxes"][0, 1, 3] = 10.5, 40.5
    other_class = {**ref, "labels": np.array([[1, 2, 0]])}
    got = compare_detections(ref, moved)
    assert (got.matched, got.detections, got.passed) == (2, 3, False)
    assert got.matched_score_abs == pytest.approx(0.01, abs=1e-6)
    assert compare_detections(ref, other_class).matched == 2 and compare_detections(ref, ref).matched == 3
