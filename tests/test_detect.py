"""maedet-detect and maedet-eval: letterboxing, mapping back, PyTorch = ONNX, and COCO AP on a set with known AP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maedet.detect import Backend, coco_box_ap, collate, evaluate, letterbox, load_annotations, map_back, rescale_size
from maedet.detect.backends import load_backend
from maedet.detect.cli import detect_main, eval_main
from maedet.detect.evaluate import detections_to_results
from maedet.detect.run import ImageResult, detect_images
from maedet.errors import MaeDetError
from maedet.export import export_detector_onnx
from maedet.zoo import Detections

pytestmark = pytest.mark.slow  # see make test-fast

SIZE = ("--test-scale", "320", "256")


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------- letterboxing
def test_rescale_follows_mmcv_keep_ratio() -> None:
    # 150×200 (h×w) at (1333, 800): factor min(1333/200, 800/150) = 5.333…; 200·5.333… + 0.5 → 1067
    assert rescale_size((150, 200)) == (800, 1067)
    # a tall 1000×300 image is limited by the long side: factor 1.333 → 1333 × 400
    assert rescale_size((1000, 300)) == (1333, 400)
    assert rescale_size((480, 640), (640, 640)) == (480, 640)


def test_letterbox_pads_to_32_and_maps_boxes_back() -> None:
    image = np.full((150, 200, 3), 200, dtype=np.uint8)
    item = letterbox(image, scale=(320, 256))  # factor min(1.6, 1.7067) = 1.6 → 240 × 320, padded 256 × 320
    assert item.resized_hw == (240, 320) and item.padded_hw == (256, 320)
    batch = collate([item], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert batch.shape == (1, 3, 256, 320)
    assert torch.allclose(batch[0, :, :240], torch.tensor((200 - 127.5) / 63.75)) and (batch[0, :, 240:] == 0).all()
    det = Detections(
        torch.tensor([[16.0, 24.0, 160.0, 120.0], [0.0, 200.0, 330.0, 250.0]]), torch.ones(2), torch.zeros(2)
    )
    back = map_back(det, item)
    assert back.boxes.tolist() == [[10.0, 15.0, 100.0, 75.0], [0.0, 125.0, 200.0, 150.0]]


def test_letterbox_gives_the_same_pixels_with_any_number_of_threads() -> None:
    # in float32, torch's bilinear kernel rounded some pixels one grey level apart with 1 and 2 threads
    # (a loader worker and the main process); seen at these sizes for this image
    image = np.random.default_rng(3).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    for short in (54, 55, 56, 58, 65, 72):
        torch.set_num_threads(2)
        two = letterbox(image, (100, short)).pixels
        torch.set_num_threads(1)
        one = letterbox(image, (100, short)).pixels
        torch.set_num_threads(2)
        assert torch.equal(one, two), short


# ------------------------------------------------------------------------------------------- a small COCO set
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}, {"id": 9, "name": "boat"}]
# (h, w) chosen so that at --test-scale 320 256 the letterboxed image needs no padding (images that do: see
# test_pytorch_and_onnx_agree_when_boxes_reach_into_the_padding).
IMAGES = {"a.png": (160, 200), "b.png": (200, 160), "c.jpg": (100, 125)}


def _boxes(h: int, w: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [[float(rng.integers(0, w - 40)), float(rng.integers(0, h - 40)), 40.0, 40.0] for _ in range(3)]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> tuple[Path, Path]:
    """Three images with 40×40 boxes of three categories, and their instances.json."""
    root = tmp_path_factory.mktemp("coco")
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id, (name, (h, w)) in enumerate(IMAGES.items(), start=1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for j, box in enumerate(_boxes(h, w, image_id)):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORIES[j]["id"],
                 "bbox": box, "area": 1600.0, "iscrowd": 0}
            )  # fmt: skip
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root, ann


def _records(ann: Path, dx: float = 0.0) -> list[dict]:
    gt = json.loads(ann.read_text())["annotations"]
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0 - 0.01 * a["id"],
         "bbox": [a["bbox"][0] + dx, *a["bbox"][1:]]}
        for a in gt
    ]  # fmt: skip


def test_ground_truth_fed_back_scores_ap_one(coco_set) -> None:
    _, ann = coco_set
    stats = coco_box_ap(load_annotations(ann), _records(ann))
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["APm"] == pytest.approx(1.0) and stats["APs"] == -1.0  # 40×40 = 1600 px² is "medium"


def test_shifted_boxes_score_the_expected_ap(coco_set) -> None:
    """Every box shifted 8 px: IoU = 32·40 / (2·1600 − 32·40) = 2/3, a true positive at the IoU thresholds
    0.50, 0.55, 0.60, 0.65 and a miss at 0.70 … 0.95, so AP = 4/10, AP50 = 1, AP75 = 0."""
    _, ann = coco_set
    stats = coco_box_ap(load_annotations(ann), _records(ann, dx=8.0))
    assert stats["AP"] == pytest.approx(0.4)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(0.0)


class GroundTruthOracle(Backend):
    """Answers with the annotated boxes, in the letterboxed input's pixels: isolates the pipeline around the
    network (reading, letterboxing, mapping back, category ids), which must then score AP 1."""

    def __init__(self, ann: Path, scale: tuple[int, int]) -> None:
        data = json.loads(ann.read_text())
        self.queue = [(img, [a for a in data["annotations"] if a["image_id"] == img["id"]]) for img in data["images"]]
        self.cat_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
        self.scale, self.name, self.num_classes = scale, "oracle", len(self.cat_index)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __call__(self, batch, image_sizes):
        out = []
        for h, w in image_sizes:
            img, anns = self.queue.pop(0)
            sx, sy = w / img["width"], h / img["height"]
            boxes = torch.tensor(
                [[x * sx, y * sy, (x + bw) * sx, (y + bh) * sy] for x, y, bw, bh in (a["bbox"] for a in anns)]
            )
            labels = torch.tensor([self.cat_index[a["category_id"]] for a in anns])
            out.append(Detections(boxes, torch.linspace(0.9, 0.5, len(anns)), labels))
        return out


def test_evaluation_pipeline_maps_boxes_back_exactly(coco_set) -> None:
    root, ann = coco_set
    result = evaluate(GroundTruthOracle(ann, (320, 256)), ann, root, scale=(320, 256))
    assert result.images == 3 and result.detections == 9
    assert result.stats["AP"] == pytest.approx(1.0)


def test_detection_records_use_the_files_category_ids() -> None:
    res = ImageResult(
        Path("x.png"), 10, 10, Detections(torch.tensor([[1.0, 2.0, 4.0, 8.0]]), torch.ones(1), torch.tensor([2]))
    )
    assert detections_to_results([res], [5], [3, 7, 9]) == [
        {"image_id": 5, "category_id": 9, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 1.0}
    ]


# ------------------------------------------------------------------------------------------- the tools
@pytest.fixture(scope="module")
def authors_s(tmp_path_factory, authors_detector_state) -> tuple[Path, Path]:
    """MAE-DET-S GFocalV2 for 3 classes in the authors' layout (random, every norm randomised), and its ONNX."""
    root = tmp_path_factory.mktemp("s3")
    state = authors_detector_state("maedet_s_gfl", seed=5, num_classes=3)
    state["bbox_head.gfl_cls.bias"] = torch.tensor([-1.0, -1.5, -2.0, -1.0])
    ckpt = root / "latest.pth"
    torch.save({"state_dict": state}, ckpt)
    onnx_file = root / "s3.onnx"
    export_detector_onnx(
        "maedet_s_gfl", onnx_file, checkpoint=ckpt, num_classes=3, input_size=(256, 320), dynamic=True, check=False
    )
    return ckpt, onnx_file


def _sorted(doc: dict) -> list[tuple]:
    return sorted((a["image_id"], -a["score"], a["category_id"], *a["bbox"]) for a in doc["annotations"])


def test_detect_gives_the_same_detections_in_pytorch_and_onnx(coco_set, authors_s, tmp_path, capsys) -> None:
    root, _ = coco_set
    ckpt, onnx_file = authors_s
    images = [str(root / n) for n in IMAGES]
    common = [*images, *SIZE]
    assert detect_main([*common, "--model", "maedet_s_gfl", "--num-classes", "3", "--checkpoint", str(ckpt),
                        "--out", str(tmp_path / "pt")]) == 0  # fmt: skip
    assert detect_main([*common, "--onnx", str(onnx_file), "--out", str(tmp_path / "onnx")]) == 0
    pt = json.loads((tmp_path / "pt" / "detections.json").read_text())
    ox = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert [i["file_name"] for i in pt["images"]] == list(IMAGES)
    assert 10 < len(pt["annotations"]) < 300  # many detections, and no image cut at max_per_img
    a, b = _sorted(pt), _sorted(ox)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[:3] == y[:3] or abs(x[1] - y[1]) < 1e-4
        assert np.allclose(x[3:], y[3:], rtol=1e-3, atol=1e-2)
    for name, (h, w) in IMAGES.items():
        with Image.open(tmp_path / "pt" / name) as drawn:
            assert drawn.size == (w, h)
    assert str(tmp_path / "pt" / "detections.json") in capsys.readouterr().out


def test_pytorch_and_onnx_agree_when_boxes_reach_into_the_padding(authors_s, tmp_path) -> None:
    """Images that need padding, alone and batched: every backend clamps to the whole input before NMS (all a file
    with NMS inside can know), so PyTorch and the file give the same detections even for boxes in the padding."""
    ckpt, onnx_file = authors_s
    rng = np.random.default_rng(3)
    paths = []
    for name, hw in (("wide.png", (150, 200)), ("tall.png", (200, 130))):  # 240×320 in 256×320; 256×166 in 256×192
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    pt, ox = load_backend("maedet_s_gfl", ckpt, num_classes=3), load_backend(onnx=onnx_file)
    for batch_size in (1, 2):
        got = [detect_images(paths, b, scale=(320, 256), batch_size=batch_size) for b in (pt, ox)]
        for a, b in zip(*got, strict=True):
            assert 10 < len(a.detections) == len(b.detections) < 100
            x, y = _by_score(a.detections), _by_score(b.detections)
            assert torch.equal(x.labels, y.labels)
            assert torch.allclose(x.scores, y.scores, atol=1e-4)
            assert torch.allclose(x.boxes, y.boxes, rtol=1e-3, atol=1e-2)
            assert (x.boxes[:, 2] <= a.width).all() and (x.boxes[:, 3] <= a.height).all()
    # the case is real: boxes reach into the padding, where the authors' clamping (to the unpadded image) changes NMS
    item = letterbox(np.asarray(Image.open(paths[0]).convert("RGB")), (320, 256))
    x = collate([item], pt.mean, pt.std)
    whole = pt.detector.predict(x)[0]
    authors = pt.detector.predict(x, image_sizes=[item.resized_hw])[0]
    assert (whole.boxes[:, 3] > item.resized_hw[0]).any() and (whole.boxes[:, 3] <= item.padded_hw[0]).all()
    assert (authors.boxes[:, 3] <= item.resized_hw[0]).all()
    assert len(whole) != len(authors) or not torch.equal(whole.labels, authors.labels)


def _by_score(d: Detections) -> Detections:
    """Best first, ties by label then box (the two runtimes may order exactly equal scores differently)."""
    keys = sorted(range(len(d)), key=lambda i: (-round(float(d.scores[i]), 4), int(d.labels[i]), d.boxes[i].tolist()))
    return Detections(d.boxes[keys], d.scores[keys], d.labels[keys])


def test_an_exported_file_is_fed_at_its_own_input_size_unless_told(coco_set, authors_s, tmp_path) -> None:
    """A file exported at 256 × 320 with dynamic H and W, run without --test-scale, sees its images as it was
    checked (scale 320 × 256), not at the authors' 1333 × 800 meant for the model on COCO."""
    from maedet.detect import TEST_SCALE
    from maedet.detect.backends import OnnxBackend
    from maedet.detect.run import default_scale

    root, _ = coco_set
    _, onnx_file = authors_s
    assert default_scale(OnnxBackend(onnx_file)) == (320, 256)
    images = [str(root / n) for n in IMAGES]
    assert detect_main([*images, "--onnx", str(onnx_file), "--out", str(tmp_path / "own")]) == 0
    assert detect_main([*images, *SIZE, "--onnx", str(onnx_file), "--out", str(tmp_path / "told")]) == 0
    own = json.loads((tmp_path / "own" / "detections.json").read_text())
    told = json.loads((tmp_path / "told" / "detections.json").read_text())
    assert own["annotations"] and own["annotations"] == told["annotations"]
    large = ["--test-scale", str(TEST_SCALE[0]), str(TEST_SCALE[1])]
    assert detect_main([*images, *large, "--onnx", str(onnx_file), "--out", str(tmp_path / "large")]) == 0
    assert json.loads((tmp_path / "large" / "detections.json").read_text())["annotations"] != own["annotations"]


def test_eval_cli_runs_a_model_on_the_set(coco_set, authors_s, tmp_path, capsys) -> None:
    root, ann = coco_set
    _, onnx_file = authors_s
    out = tmp_path / "ap.json"
    args = ["--ann", str(ann), "--images", str(root), *SIZE, "--json", str(out)]
    assert eval_main([*args, "--onnx", str(onnx_file)]) == 0
    summary = json.loads(out.read_text())
    assert summary["images"] == 3 and summary["detections"] > 0
    assert set(summary) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # one unit in the table and the JSON (issue 17): percent; pycocotools' -1 (no small boxes here) is null + reason
    assert summary["unit"] == "percent" and 0.0 <= summary["AP"] <= 100.0
    assert summary["APs"] is None and "no ground-truth boxes of this size" in summary["not_available"]["APs"]
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1]) == summary
    assert "AP (%)" in captured.err and "n/a: no ground-truth boxes of this size" in " ".join(captured.err.split())
    table_ap = next(line for line in captured.err.splitlines() if "│" in line and any(c.isdigit() for c in line))
    assert f"{summary['AP']:.1f}" in table_ap


def test_tool_errors_are_one_sentence(coco_set, authors_s, tmp_path, capsys) -> None:
    root, ann = coco_set
    ckpt, _ = authors_s
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    cases = [
        (detect_main, [str(root / "a.png"), "--model", "maedet_s_gfl", "--out", str(tmp_path / "o")], "needs weights"),
        (detect_main, [str(root / "nope.png"), "--onnx", "x.onnx", "--out", str(tmp_path / "o")], "does not exist"),
        (
            detect_main,
            [
                str(root / "a.png"),
                "--model",
                "maedet_s_gfl",
                "--num-classes",
                "3",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "full"),
            ],
            "not empty",
        ),
        (
            detect_main,
            [str(root / "a.png"), "--onnx", str(tmp_path / "fake.onnx"), "--out", str(tmp_path / "o")],
            "not a readable ONNX file",
        ),
        (
            eval_main,
            ["--ann", str(ann), "--images", str(root), "--model", "maedet_s_gfl", "--checkpoint", str(ckpt)],
            "has 4 class channels, which does not fit num_classes=80",
        ),
    ]
    for main, argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("main", "prog"), [(detect_main, "maedet-detect"), (eval_main, "maedet-eval")])
def test_detect_and_eval_share_the_cli_conventions(main, prog, tmp_path, capsys) -> None:
    from maedet import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{prog} {__version__}"
    missing = str(tmp_path / "missing.json")
    argv = ["--ann", missing, "--images", str(tmp_path), "--model", "maedet_s_gfl"] if prog == "maedet-eval" else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:") and "Traceback" not in err[0]


# ------------------------------------------------------------------------------- annotation files (issue 17)
def _coco_dataset() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }


def _broken(change) -> dict:
    data = _coco_dataset()
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (_broken(lambda d: d["images"][0].pop("file_name")), "image 0 (id 1) has no 'file_name'"),
        (_broken(lambda d: d["annotations"][0].pop("bbox")), "annotation 0 (id 1) has no 'bbox'"),
        (_broken(lambda d: d["annotations"][0].pop("area")), "annotation 0 (id 1) has no 'area'"),
        (_broken(lambda d: d["annotations"][0].update(iscrowd="yes")), "iscrowd 'yes'; it must be 0 or 1"),
        (_broken(lambda d: d["images"].append({"id": "2", "file_name": "b.png"})), "id '2', which is not an integer"),
        (_broken(lambda d: d["annotations"][0].update(image_id="1")), "image_id '1', which is not an integer"),
        (_broken(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])), "a list of 4 numbers"),
        (_broken(lambda d: d["annotations"][0].update(category_id=7)), "category 7, which is not in 'categories'"),
        (_broken(lambda d: d.pop("categories")), "no 'categories' list"),
        ([1, 2], "holds a list"),
    ],
)
def test_a_malformed_annotation_file_is_one_sentence(data, expect: str, tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MaeDetError, match="COCO annotation file") as info:
        load_annotations(path)
    assert expect in str(info.value)
    assert "\n" not in str(info.value)


def test_eval_refuses_a_malformed_annotation_file_before_building_the_model(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_broken(lambda d: d["annotations"][0].update(iscrowd="yes"))))
    # no weights are given: the annotation file must be refused before the missing weights are noticed
    code = eval_main(["--ann", str(path), "--images", str(tmp_path), "--model", "maedet_s_gfl"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("maedet-eval: error: ") and "iscrowd 'yes'" in err[-1]


def _random_eval_set(rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """Images with many boxes, crowds, boxes of every area range, and detections that tie on IoU."""
    images, annotations, results = [], [], []
    for image_id in range(1, 5):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 200, "height": 200})
        for _ in range(60):
            x, y, w, h = rng.uniform(0, 120, 2).tolist() + rng.choice([4.0, 20.0, 70.0], 2).tolist()
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 4)),
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.15)}
            )  # fmt: skip
        for ann in annotations[-60:]:
            if rng.random() < 0.5:
                x, y, w, h = ann["bbox"]
                shift = float(rng.choice([0.0, 1.0, 3.0]))  # 0.0 twice over: exact ties
                results.append({"image_id": image_id, "category_id": ann["category_id"],
                                "bbox": [x + shift, y, w, h], "score": float(rng.choice([0.3, 0.5, 0.9]))})  # fmt: skip
        annotations.append(dict(annotations[-1], id=len(annotations) + 1))  # a duplicate box: two equal IoUs
    categories = [{"id": c, "name": str(c)} for c in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def test_linear_matching_gives_pycocotools_results_exactly(tmp_path: Path) -> None:
    from pycocotools.cocoeval import COCOeval

    from maedet.detect.coco_match import LinearCOCOeval

    data, results = _random_eval_set(np.random.default_rng(0))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    coco = load_annotations(path)
    found = coco.loadRes(results)
    evaluators = []
    for kind in (COCOeval, LinearCOCOeval):
        evaluator = kind(coco, found, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        evaluators.append(evaluator)
    ours, theirs = evaluators[1], evaluators[0]
    assert len(ours.evalImgs) == len(theirs.evalImgs)
    for mine, ref in zip(ours.evalImgs, theirs.evalImgs, strict=True):
        assert (mine is None) == (ref is None)
        if ref is not None:
            for key in ("dtIds", "gtIds", "dtScores"):
                assert list(mine[key]) == list(ref[key])
            for key in ("dtMatches", "gtMatches", "gtIgnore", "dtIgnore"):
                np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(ref[key]), err_msg=key)
    np.testing.assert_array_equal(ours.stats, theirs.stats)
    assert 0.1 < ours.stats[0] < 1.0  # the set has real matches and real misses


def test_evaluation_logs_its_stages(coco_set) -> None:
    import logging

    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("maedet.detect")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)  # a small file logs its stages at DEBUG, a large one at INFO
    try:
        load_annotations(coco_set[1])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    messages = [r.getMessage() for r in seen]
    assert any(m.startswith("reading the annotations") for m in messages), messages
    assert any(m.startswith("read 3 images, 9 annotations") for m in messages), messages


# ------------------------------------------------------------------------ detector ONNX metadata (issue 17)
_GOOD_META = {
    "task": "detection",
    "model_name": "hand_made",
    "outputs": "detections",
    "input_size": [3, 64, 64],
    "input_dtype": "float32",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "num_classes": 80,
    "strides": [8, 16, 32, 64, 128],
    "postprocess": {"nms_pre": 1000, "score_thr": 0.05, "iou_thr": 0.6, "max_per_img": 100},
}


def _identity_onnx(path: Path, meta: dict) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from maedet.export.metadata import apply_metadata

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    apply_metadata(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"num_classes": None}, "no 'num_classes'"),
        ({"num_classes": "eighty"}, "num_classes is 'eighty'"),
        ({"mean": [0.5]}, "mean is [0.5]"),
        ({"std": [0, 0, 0]}, "above 0"),
        ({"postprocess": None}, "no 'postprocess'"),
        ({"postprocess": {"nms_pre": 10}}, "an object of nms_pre"),
        ({"postprocess": {"nms_pre": 10, "score_thr": 2.0, "iou_thr": 0.5, "max_per_img": 5}}, "score_thr"),
        ({"outputs": "boxes"}, "'detections' or 'raw'"),
        ({"strides": "8,16"}, "a list of strides"),
        ({"input_size": [3, 64]}, "[channels, height, width]"),
    ],
)
def test_hand_made_detector_metadata_is_one_sentence(change: dict, expect: str, tmp_path: Path) -> None:
    meta = {k: v for k, v in {**_GOOD_META, **change}.items() if v is not None}
    path = _identity_onnx(tmp_path / "hand.onnx", meta)
    with pytest.raises(MaeDetError) as info:
        load_backend(onnx=path)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_a_raw_file_must_have_the_outputs_its_strides_say(tmp_path: Path) -> None:
    path = _identity_onnx(tmp_path / "hand.onnx", {**_GOOD_META, "outputs": "raw"})
    with pytest.raises(MaeDetError, match="has 1 outputs, but its metadata's 5 strides need 10"):
        load_backend(onnx=path)


@pytest.mark.parametrize(
    ("size", "scale"), [(["1333", "800"], (1333, 800)), (["1333x800"], (1333, 800)), (["640"], (640, 640))]
)
def test_size_takes_the_grammar_every_tool_takes(size, scale) -> None:
    from maedet.detect.cli import build_detect_parser, build_eval_parser

    assert build_detect_parser().parse_args(["x.png", "--out", "o", "--test-scale", *size]).test_scale == scale
    assert build_eval_parser().parse_args(["--ann", "a", "--images", "i", "--test-scale", *size]).test_scale == scale


def test_detect_names_the_folder_entries_it_skips(coco_set, authors_s, tmp_path, capsys) -> None:
    """Issue 17: files in a folder that are not images are named in one warning, not skipped without a word."""
    root, _ = coco_set
    _, onnx_file = authors_s
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((root / "a.png").read_bytes())
    (folder / "notes.txt").write_text("mine")
    (folder / "raw.cr2").write_bytes(b"raw")
    (folder / "more").mkdir()
    assert detect_main([str(folder), "--onnx", str(onnx_file), "--out", str(tmp_path / "o"), *SIZE, "--no-draw"]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
    assert warning == [
        f"maedet-detect: warning: skipped 3 entries of {folder} that are not image files "
        "(.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff): more/, notes.txt, raw.cr2."
    ]


def test_pretrained_without_network_names_the_cli_flag(coco_set, tmp_path, capsys, monkeypatch) -> None:
    """Issue 17: offline, ``maedet-detect --pretrained`` says to give the file with ``--checkpoint FILE`` (the flag
    the user can type), not ``checkpoint=FILE``. The authors' URL points at a local port nothing listens on."""
    import dataclasses
    import socket

    from maedet.zoo import detectors

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = dataclasses.replace(detectors.DETECTORS["maedet_s_gfl"], url=f"http://127.0.0.1:{port}/latest.pth")
    monkeypatch.setitem(detectors.DETECTORS, "maedet_s_gfl", spec)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    root, _ = coco_set
    argv = [str(root / "a.png"), "--model", "maedet_s_gfl", "--pretrained", "--out", str(tmp_path / "o")]
    assert detect_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-detect: error: could not download http://127.0.0.1:") and len(err.splitlines()) == 1
    assert "give it with --checkpoint FILE" in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- issue 17: crashes
def _png_header(width: int, height: int) -> bytes:
    """A PNG announcing width×height greyscale pixels with only the first rows present (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_a_one_pixel_strip_is_never_resized_to_zero_pixels() -> None:
    assert rescale_size((1, 5000)) == (1, 1333)  # 1 · 0.2666 + 0.5 rounds to 0 without the floor
    assert rescale_size((5000, 1)) == (1333, 1)
    item = letterbox(np.zeros((1, 5000, 3), dtype=np.uint8))
    assert item.resized_hw == (1, 1333) and item.padded_hw == (32, 1344)


@pytest.mark.parametrize(("width", "height", "message"), [(20_000, 20_000, "over"), (12_000, 12_000, "12000×12000")])
def test_oversized_images_are_refused_from_their_header(tmp_path, width, height, message) -> None:
    from maedet.images import ImageError, image_size, read_image

    path = tmp_path / "big.png"
    path.write_bytes(_png_header(width, height))
    for reader in (image_size, read_image):
        with pytest.raises(ImageError, match=rf"{message}.* the limit is 64 megapixels"):
            reader(path)


def test_detect_refuses_a_bomb_before_loading_a_model(tmp_path, capsys) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    code = detect_main(
        [str(tmp_path / "bomb.png"), "--model", "maedet_s_gfl", "--pretrained", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "megapixels" in err[0]
    assert not (tmp_path / "o").exists()


def test_detection_memory_is_estimated_before_any_image_is_decoded(tmp_path) -> None:
    import maedet
    from maedet.detect.backends import TorchBackend
    from maedet.detect.run import check_detect_memory, detection_peak_bytes
    from maedet.memory import MemoryEstimateError

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    backend = TorchBackend(maedet.create_detector("gfl", backbone="resnet18", num_classes=5, fpn_channels=64))
    assert check_detect_memory([tmp_path / "a.png"], backend, (320, 256), 1) == ((48, 64),)
    with pytest.raises(MemoryEstimateError, match=r"detecting at up to 1×3×75008×100000 needs about"):
        check_detect_memory([tmp_path / "a.png"], backend, (100_000, 100_000), 1)
    # post-processing is part of the estimate: nms_pre rows per level and class grow it
    small = detection_peak_bytes(backend.detector, (1, 3, 256, 320), nms_pre=10)
    large = detection_peak_bytes(backend.detector, (1, 3, 256, 320), nms_pre=100_000)
    assert large - small >= 5 * (100_000 - 10) * (6 + 4) * 4  # five levels, 6 class channels + 4 box sides


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--test-scale", "0", "0"], "argument --test-scale: an input size must be positive"),
        (["--test-scale", "16", "16"], "argument --test-scale: expected a side length in pixels at least 32, got 16"),
        (["--test-scale", "9" * 5000, "800"], "a 5004-character value is far beyond the 8192 pixels"),
        (["--device", "banana"], "unknown device 'banana'"),
        (["--device", "meta"], "unknown device 'meta'"),
    ],
)
def test_detect_options_are_checked_before_anything_runs(tmp_path, capsys, flags, message) -> None:
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    code = detect_main([str(tmp_path / "a.png"), "--model", "maedet_s_gfl", *flags, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_one_device_parser_says_what_is_wrong() -> None:
    from maedet.devices import parse_device
    from maedet.errors import MaeDetError

    assert parse_device("cpu") == parse_device(" CPU ") == "cpu"
    for text in ("cuda", "cuda:0", "cuda:99"):
        with pytest.raises(MaeDetError, match=r"^CUDA is not available on this machine"):
            parse_device(text)
    for text in ("banana", "meta", "cuda:x", "cpu:3"):
        with pytest.raises(MaeDetError, match="device"):
            parse_device(text)


def test_a_deeply_nested_coco_file_is_one_sentence(tmp_path) -> None:
    from maedet.errors import MaeDetError

    (tmp_path / "ann.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MaeDetError, match="nested too deeply"):
        load_annotations(tmp_path / "ann.json")
    (tmp_path / "ann.json").write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    with pytest.raises(MaeDetError, match="at most 64 are read"):
        load_annotations(tmp_path / "ann.json")
