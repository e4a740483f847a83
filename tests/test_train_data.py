"""maedet.train's data half: the synthetic shapes set, COCO files as other tools write them, the authors'
augmentation arithmetic, batches and the loader's errors (issue 16, items 3, 7 and 8)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maedet.errors import MaeDetError
from maedet.letterbox import collate as letterbox_collate
from maedet.letterbox import letterbox
from maedet.train import (
    DetectionDataset,
    EvalTransform,
    TrainTransform,
    check_images,
    collate,
    generate_shapes,
    load_coco,
    make_loader,
)
from maedet.train.data_cli import main as data_main
from maedet.train.shapes import SHAPE_CLASSES, shape_mask

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


# ------------------------------------------------------------------------------------------- synthetic shapes
@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "set", train=16, val=8, size=128, seed=3)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_shapes_set_is_coco_that_pycocotools_loads_with_boxes_inside_images(shapes_set: Path) -> None:
    from pycocotools.coco import COCO

    for split, count in (("train", 16), ("val", 8)):
        coco = COCO(str(shapes_set / f"{split}.json"))
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            with Image.open(shapes_set / split / info["file_name"]) as img:
                assert img.size == (info["width"], info["height"])
                assert max(img.size) == 128 and min(img.size) >= 96
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert 1 <= len(anns) <= 6
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
                assert ann["iscrowd"] == 0
                assert 0.25 * w * h <= ann["area"] <= w * h  # a shape fills its box at most


@pytest.mark.parametrize(
    ("kind", "area_over_r2"),
    [
        ("circle", math.pi),
        ("square", 2.0),  # diagonal 2r
        ("triangle", 3 * math.sqrt(3) / 4),
        ("star", 5 * 0.45 * math.sin(math.pi / 5)),  # ten triangles r × 0.45r at 36°
        ("cross", 2 * 2 * 0.6 - 0.6**2),  # two 2r × 0.6r bars less their overlap
        ("ring", math.pi * (1 - 0.7**2)),
    ],
)
def test_shape_masks_have_the_geometric_area(kind: str, area_over_r2: float) -> None:
    radius = 120.0  # large enough that the boundary pixels PIL adds stay under 3 %
    pixels = int((np.asarray(shape_mask(kind, radius, angle=0.3, ring_width=0.3)) > 0).sum())
    assert pixels == pytest.approx(area_over_r2 * radius**2, rel=0.03)


def test_shapes_are_deterministic_and_train_differs_from_val(shapes_set: Path, tmp_path: Path) -> None:
    again = generate_shapes(tmp_path / "again", train=16, val=8, size=128, seed=3)
    assert _digest(again) == _digest(shapes_set)
    other = generate_shapes(tmp_path / "other", train=16, val=8, size=128, seed=4)
    assert _digest(other)["train.json"] != _digest(shapes_set)["train.json"]
    pictures = _digest(shapes_set)
    train = {v for k, v in pictures.items() if k.startswith("train/")}
    val = {v for k, v in pictures.items() if k.startswith("val/")}
    assert len(train) == 16 and len(val) == 8 and not train & val


def test_shapes_class_subset_keeps_the_class_ids(tmp_path: Path) -> None:
    out = generate_shapes(tmp_path / "s", train=6, val=2, size=96, classes=["ring", "circle"])
    data = json.loads((out / "train.json").read_text())
    assert data["categories"] == [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 6, "name": "ring", "supercategory": "shape"},
    ]
    assert {a["category_id"] for a in data["annotations"]} <= {1, 6}
    assert load_coco(out / "train.json", out / "train").class_names == ("circle", "ring")


def test_shapes_interrupted_leave_nothing(tmp_path: Path) -> None:
    calls = []

    def stop() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "set", train=4, val=4, size=96, on_image=stop)
    assert list(tmp_path.iterdir()) == []


def test_data_cli_writes_the_set_and_prints_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert data_main(["shapes", "--out", str(tmp_path / "empty"), "--train", "3", "--val", "2", "--size", "80"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "empty")
    assert len(list((tmp_path / "empty" / "train").iterdir())) == 3
    assert len(json.loads((tmp_path / "empty" / "val.json").read_text())["images"]) == 2


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        ("--out {full} --train 2 --val 1", "not empty"),
        ("--out {tmp}/new --train 0 --val 1", "--train"),
        ("--out {tmp}/new --train 2 --val -1", "--val"),
        ("--out {tmp}/new --train 2 --val 1 --size 10", "--size"),
        ("--out {tmp}/new --train 2 --val 1 --classes circle hexagon", "hexagon"),
        ("--out {tmp}/new --train 2 --val 1 --classes circle circle", "repeated"),
        ("--out {tmp}/missing/new --train 2 --val 1", "does not exist"),
        ("--out {file} --train 2 --val 1", "not a folder"),
        ("--out {tmp}/new --train 100000000000 --val 1", "GiB free"),
        ("--out {tmp}/" + "n" * 256 + " --train 2 --val 1", "too long"),
        ("--out {tmp}/new --train two --val 1", "invalid int"),
    ],
)
def test_data_cli_errors_are_one_sentence_and_write_nothing(
    argv: str, expect: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    before = _digest(tmp_path)
    args = argv.format(tmp=tmp_path, full=full, file=tmp_path / "a_file").split()
    assert data_main(["shapes", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maedet-data"), err
    assert "error:" in err[0] and expect in err[0]
    assert _digest(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]


# ------------------------------------------------------------------------------------------- odd COCO files
def _image(path: Path, h: int = 40, w: int = 60, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _coco(tmp_path: Path) -> dict:
    """Three images (one in a sub-folder, one by absolute path), categories 7, 9 and 12 listed out of order
    (9 has no annotations), extra keys everywhere."""
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "sub" / "b.png")
    absolute = _image(tmp_path / "elsewhere" / "c.png")
    return {
        "info": {"maker": "another tool"},
        "images": [
            {"id": 10, "file_name": "a.png", "width": 60, "height": 40, "flickr_url": "x"},
            {"id": 3, "file_name": "sub/b.png", "width": 60, "height": 40},
            {"id": 5, "file_name": str(absolute), "width": 60, "height": 40},
        ],
        "categories": [{"id": 12, "name": "c"}, {"id": 7, "name": "a", "extra": 1}, {"id": 9, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 12, "bbox": [1, 2, 10, 20], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5.5, 6, 3, 4], "segmentation": [[1, 2, 3]]},
            {"id": 3, "image_id": 3, "category_id": 7, "bbox": [0, 0, 60, 40], "area": 2400, "iscrowd": False},
        ],
    }


def _write(tmp_path: Path, data: object, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_coco_reader_takes_what_other_tools_write(tmp_path: Path) -> None:
    data = _coco(tmp_path)
    loaded = load_coco(_write(tmp_path, data), tmp_path / "images")
    assert loaded.category_ids == (7, 9, 12) and loaded.class_names == ("a", "b", "c") and loaded.num_classes == 3
    assert [r.image_id for r in loaded.records] == [3, 10]  # id order; image 5 has no annotations
    b, a = loaded.records
    assert b.path == tmp_path / "images" / "sub" / "b.png" and (b.height, b.width) == (40, 60)
    np.testing.assert_array_equal(a.boxes, np.array([[1, 2, 11, 22], [5.5, 6, 8.5, 10]], np.float32))
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert a.labels.tolist() == [2, 0] and b.labels.tolist() == [0]
    assert loaded.dropped.empty_images == 1
    assert check_images(loaded.records) == 0
    kept = load_coco(_write(tmp_path, data), tmp_path / "images", filter_empty_gt=False)
    assert [r.image_id for r in kept.records] == [3, 5, 10]
    assert kept.records[1].path == tmp_path / "elsewhere" / "c.png" and len(kept.records[1].labels) == 0


def test_coco_reader_drops_crowd_degenerate_and_non_finite_boxes_with_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = _coco(tmp_path)
    bad = [
        ([1, 1, 0, 5], 0),  # zero width
        ([1, 1, 5, -2], 0),  # negative height
        ([1, 1, 0.5, 5], 0),  # under one pixel
        ([61, 1, 5, 5], 0),  # wholly outside the 60-wide image
        ([1, 1, 5, 5], 1),  # crowd
    ]
    for i, (bbox, crowd) in enumerate(bad):
        data["annotations"].append({"id": 100 + i, "image_id": 5, "category_id": 9, "bbox": bbox, "iscrowd": crowd})
    data["annotations"].append({"id": 200, "image_id": 5, "category_id": 9, "bbox": [1, 1, 5, 5], "area": 0})
    text = json.dumps(data)[:-1] + ', "more": [NaN, Infinity]}'
    for i, bbox in enumerate(("[NaN, 1, 5, 5]", "[1, 1, Infinity, 5]")):
        text = text.replace('"annotations": [', f'"annotations": [{{"id": {300 + i}, "image_id": 5, '
                            f'"category_id": 9, "bbox": {bbox}}}, ', 1)  # fmt: skip
    with caplog.at_level("INFO", logger="maedet"):
        loaded = load_coco(_write(tmp_path, text), tmp_path / "images")
    assert (loaded.dropped.degenerate, loaded.dropped.non_finite, loaded.dropped.crowd) == (5, 2, 1)
    image5 = next(r for r in loaded.records if r.image_id == 5)  # annotated, so kept, but with no boxes
    assert image5.boxes.shape == (0, 4) and image5.labels.shape == (0,)
    assert loaded.num_boxes == 3
    assert "5 boxes of zero or negative size" in caplog.text and "2 boxes with NaN" in caplog.text
    assert "1 crowd boxes" in caplog.text


def _break(data: dict, case: str) -> object:
    """The valid file of :func:`_coco` with one fault."""
    ann, img = data["annotations"][0], data["images"][0]
    if case in ("no-images", "no-annotations", "no-categories"):
        del data[case[3:]]
    elif case == "images-dict":
        data["images"] = {"a": 1}
    elif case == "image-not-object":
        data["images"].append("a.png")
    elif case == "no-file-name":
        del img["file_name"]
    elif case == "file-name-number":
        img["file_name"] = 7
    elif case == "no-bbox":
        del ann["bbox"]
    elif case == "bbox-string":
        ann["bbox"] = "1,2,3,4"
    elif case == "bbox-three":
        ann["bbox"] = [1, 2, 3]
    elif case == "bbox-text-number":
        ann["bbox"] = [1, 2, "3", 4]
    elif case == "mixed-id-types":
        img["id"] = "10"
    elif case == "float-category-id":
        data["categories"][0]["id"] = 12.0
    elif case == "crowd-yes":
        ann["iscrowd"] = "yes"
    elif case == "unknown-image":
        ann["image_id"] = 999
    elif case == "unknown-category":
        ann["category_id"] = 8
    elif case == "duplicate-image":
        data["images"].append(dict(img))
    elif case == "no-width":
        del img["width"]
    elif case == "top-list":
        return [data]
    elif case == "no-categories-listed":
        data["categories"] = []
    return data


BROKEN = {
    "no-images": "no 'images' list",
    "no-annotations": "no 'annotations' list",
    "no-categories": "no 'categories' list",
    "images-dict": "'images' as an object",
    "image-not-object": "images[3] as a string",
    "no-file-name": "'file_name' in images[0]",
    "file-name-number": "'file_name' in images[0]",
    "no-bbox": "no 'bbox' in annotations[0]",
    "bbox-string": "annotations[0].bbox",
    "bbox-three": "annotations[0].bbox",
    "bbox-text-number": "4 numbers",
    "mixed-id-types": "images[0].id = '10' (a string)",
    "float-category-id": "categories[0].id = 12.0",
    "crowd-yes": "iscrowd = 'yes'",
    "unknown-image": "image id 999",
    "unknown-category": "category id 8",
    "duplicate-image": "image id 10 twice",
    "no-width": "'width' in images[0]",
    "top-list": "a list at the top",
    "no-categories-listed": "lists no categories",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_coco_files_are_one_sentence_naming_the_file(case: str, tmp_path: Path) -> None:
    path = _write(tmp_path, _break(_coco(tmp_path), case), f"{case}.json")
    with pytest.raises(MaeDetError) as info:
        load_coco(path, tmp_path / "images")
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    assert f"{case}.json" in message and BROKEN[case] in message, message


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("", "is empty"),
        ("  \n\t", "is empty"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        ('{"images": [', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests JSON too deeply"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "nests JSON too deeply"),
        (None, "does not exist"),
        ("folder", "is a folder"),
    ],
)
def test_unreadable_annotation_files_are_one_sentence(content: object, expect: str, tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(MaeDetError, match=expect) as info:
        load_coco(path, tmp_path)
    assert "ann.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_annotation_file_without_read_permission_is_one_sentence(tmp_path: Path) -> None:
    path = _write(tmp_path, _coco(tmp_path))
    path.chmod(0)
    with pytest.raises(MaeDetError, match="cannot be read"):
        load_coco(path, tmp_path / "images")


def test_image_check_names_the_first_missing_or_unreadable_file(tmp_path: Path) -> None:
    loaded = load_coco(_write(tmp_path, _coco(tmp_path)), tmp_path / "images", filter_empty_gt=False)
    assert check_images(loaded.records) == 0
    (tmp_path / "images" / "sub" / "b.png").write_bytes(b"not a png")
    with pytest.raises(MaeDetError, match=r"sub/b\.png' cannot be read as an image"):
        check_images(loaded.records)
    (tmp_path / "images" / "sub" / "b.png").unlink()
    with pytest.raises(MaeDetError, match=r"sub/b\.png' does not exist"):
        check_images(loaded.records)


def test_image_check_counts_sizes_that_differ_from_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loaded = load_coco(_write(tmp_path, _coco(tmp_path)), tmp_path / "images")
    _image(tmp_path / "images" / "a.png", h=41, w=60)
    with caplog.at_level("WARNING", logger="maedet"):
        assert check_images(loaded.records) == 1
    assert "a.png" in caplog.text


# ------------------------------------------------------------------------------------------- transforms
def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _denormalise(image: torch.Tensor) -> np.ndarray:
    chw = image.numpy() * STD[:, None, None] + MEAN[:, None, None]
    return np.rint(chw * 255).transpose(1, 2, 0)


@pytest.mark.parametrize(
    ("hw", "short", "long_limit", "expect"),
    [
        ((10, 13), 5, 1333, (5, 7)),  # 13 · 0.5 = 6.5 rounds half up to 7 (not to even, 6)
        ((10, 40), 20, 60, (15, 60)),  # the long limit binds: min(60 / 40, 20 / 10) = 1.5
        ((40, 10), 20, 60, (60, 15)),  # portrait: the same with the sides swapped
        ((100, 150), 100, 1333, (100, 150)),  # factor 1
        ((300, 200), 480, 1333, (720, 480)),  # enlarged
    ],
)
def test_train_resize_follows_mmcv_rescale_with_rounding(hw, short, long_limit, expect) -> None:
    transform = TrainTransform(short_range=(short, short), long_limit=long_limit, flip_prob=0.0)
    h, w = hw
    boxes = np.array([[0, 0, w, h], [1, 2, 3, 5]], np.float32)
    out = transform(_pixels(h, w), boxes, torch.Generator().manual_seed(0))
    assert out.image_size == expect
    sx, sy = expect[1] / w, expect[0] / h  # the actual ratios, not the drawn factor
    assert out.scale_xy == pytest.approx((sx, sy))
    expected = np.array([[0, 0, expect[1], expect[0]], [sx, 2 * sy, 3 * sx, 5 * sy]], np.float32)
    np.testing.assert_allclose(out.boxes.numpy(), expected, rtol=1e-6)
    assert out.pad_size == (math.ceil(expect[0] / 32) * 32, math.ceil(expect[1] / 32) * 32)


def test_short_edges_are_drawn_uniformly_over_the_whole_integer_range() -> None:
    transform = TrainTransform(short_range=(192, 200), long_limit=512, flip_prob=0.5)
    gen = torch.Generator().manual_seed(0)
    draws = [transform.draw(gen) for _ in range(2000)]
    counts = np.bincount([s for s, _ in draws], minlength=201)[192:]
    assert set(np.nonzero(counts)[0] + 192) == set(range(192, 201))  # both ends included, nothing outside
    assert counts.min() > 150  # 2000 / 9 ≈ 222 each
    assert 0.45 < np.mean([f for _, f in draws]) < 0.55


def test_flip_mirrors_pixels_and_boxes_without_minus_one() -> None:
    pixels = np.zeros((32, 40, 3), np.uint8)
    pixels[4:10, 3:11] = 255  # a white block: columns 3..10, rows 4..9
    boxes = np.array([[3, 4, 11, 10]], np.float32)
    out = TrainTransform(short_range=(32, 32), long_limit=1333, flip_prob=1.0)(pixels, boxes)
    assert out.flipped
    np.testing.assert_array_equal(out.boxes.numpy(), [[40 - 11, 4, 40 - 3, 10]])
    white = np.argwhere(_denormalise(out.image)[..., 0] == 255)
    assert white[:, 1].min() == 29 and white[:, 1].max() == 36  # columns 29..36 = [29, 37) = the flipped box


def test_boxes_reaching_outside_are_clipped_to_the_resized_image() -> None:
    boxes = np.array([[-5, -3, 20, 50], [10, 10, 70, 30]], np.float32)
    out = TrainTransform(short_range=(20, 20), long_limit=1333, flip_prob=0.0)(_pixels(40, 60), boxes)
    assert out.image_size == (20, 30)
    np.testing.assert_allclose(out.boxes.numpy(), [[0, 0, 10, 20], [5, 5, 30, 15]])


def test_normalised_image_is_padded_with_zero_to_a_multiple_of_32() -> None:
    pixels = _pixels(33, 70)
    out = TrainTransform(short_range=(33, 33), long_limit=1333, flip_prob=0.0)(pixels, np.zeros((0, 4), np.float32))
    assert out.image.shape == (3, 64, 96) and out.pad_size == (64, 96) and out.image_size == (33, 70)
    expected = (pixels / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out.image[:, :33, :70].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    assert not out.image[:, 33:].any() and not out.image[:, :, 70:].any()
    assert out.boxes.shape == (0, 4)


def test_eval_transform_is_the_detectors_inference_preprocessing() -> None:
    pixels = _pixels(120, 90)
    boxes = np.array([[10, 20, 30, 60]], np.float32)
    out = EvalTransform(scale=(200, 100))(pixels, boxes)
    boxed = letterbox(pixels, (200, 100))
    assert out.image_size == boxed.resized_hw == (133, 100)
    torch.testing.assert_close(out.image, letterbox_collate([boxed], MEAN.tolist(), STD.tolist())[0])
    sx, sy = 100 / 90, 133 / 120
    np.testing.assert_allclose(out.boxes.numpy(), [[10 * sx, 20 * sy, 30 * sx, 60 * sy]], rtol=1e-6)


@pytest.mark.parametrize("kwargs", [{"short_range": (10, 5)}, {"long_limit": 0}, {"flip_prob": 1.5}])
def test_bad_transform_settings_are_one_sentence(kwargs) -> None:
    with pytest.raises(MaeDetError):
        TrainTransform(**kwargs)


# ------------------------------------------------------------------------------------------- dataset and loader
@pytest.fixture
def odd_sizes(tmp_path: Path) -> list:
    """Five images of different sizes, each with one box, as records."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, (h, w) in enumerate([(50, 70), (64, 40), (33, 33), (90, 60), (45, 100)]):
        Image.fromarray(_pixels(h, w, seed=i)).save(tmp_path / f"{i}.png")
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        data["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, 20, 25]})
    return load_coco(_write(tmp_path, data), tmp_path).records


def test_collate_pads_to_the_largest_image_and_keeps_each_pad_size(odd_sizes) -> None:
    dataset = DetectionDataset(odd_sizes, TrainTransform(short_range=(64, 64), long_limit=100, flip_prob=0.0))
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate(items)
    # 50×70 → ×1.28 → 64×90; 64×40 → ×1.5625 (long side binds) → 100×63; 33×33 → 64×64; 90×60 → 96×64; 45×100 → ×1
    assert [it.image_size for it in items] == [(64, 90), (100, 63), (64, 64), (96, 64), (45, 100)]
    assert [it.pad_size for it in items] == [(64, 96), (128, 64), (64, 64), (96, 64), (64, 128)]
    assert batch.images.shape == (5, 3, 128, 128) and len(batch) == 5
    assert batch.pad_sizes == [it.pad_size for it in items] and batch.image_ids == [1, 2, 3, 4, 5]
    for i, it in enumerate(items):
        h, w = it.image.shape[1:]
        assert (h, w) == it.pad_size
        torch.testing.assert_close(batch.images[i, :, :h, :w], it.image)
        assert not batch.images[i, :, h:].any() and not batch.images[i, :, :, w:].any()
        assert batch.targets[i]["labels"].dtype == torch.int64 and batch.targets[i]["boxes"].dtype == torch.float32


def test_loader_is_reproducible_per_epoch_whatever_the_workers(odd_sizes) -> None:
    def epochs(workers: int) -> list:
        dataset = DetectionDataset(odd_sizes, TrainTransform(short_range=(30, 60), long_limit=100))
        loader = make_loader(dataset, 2, shuffle=True, workers=workers, seed=7)
        out = []
        for epoch in (0, 1, 0):
            loader.set_epoch(epoch)
            out.append([(b.image_ids, b.pad_sizes, [t["boxes"] for t in b.targets], b.images) for b in loader])
        return out

    serial, parallel = epochs(0), epochs(2)
    for a, b in zip(serial, parallel, strict=True):
        for (ids_a, pads_a, boxes_a, img_a), (ids_b, pads_b, boxes_b, img_b) in zip(a, b, strict=True):
            assert ids_a == ids_b and pads_a == pads_b
            torch.testing.assert_close(boxes_a, boxes_b, rtol=0, atol=0)
            torch.testing.assert_close(img_a, img_b, rtol=0, atol=0)
    assert [x[0] for x in serial[0]] == [x[0] for x in serial[2]]  # epoch 0 again: the same batches
    assert [x[0] for x in serial[0]] != [x[0] for x in serial[1]] or [x[1] for x in serial[0]] != [
        x[1] for x in serial[1]
    ]


def test_unreadable_image_in_a_worker_is_one_sentence_naming_it(odd_sizes, tmp_path: Path) -> None:
    broken = tmp_path / "truncated.png"
    whole = (tmp_path / "3.png").read_bytes()
    broken.write_bytes(whole[: len(whole) // 3])  # the header reads (the up-front check passes), the pixels do not
    records = list(odd_sizes)
    records[3] = dataclasses.replace(records[3], path=broken)
    assert check_images(records) == 0
    loader = make_loader(DetectionDataset(records, TrainTransform((30, 60), 100)), 2, workers=2, seed=0)
    with pytest.raises(MaeDetError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert message == f"image {str(broken)!r} cannot be read as an image (its data is damaged)."


def test_batch_larger_than_the_data_is_one_sentence(odd_sizes) -> None:
    dataset = DetectionDataset(odd_sizes, TrainTransform())
    with pytest.raises(MaeDetError, match="batch of 8 images is larger than the 5 images"):
        make_loader(dataset, 8, drop_last=True)
    assert len(make_loader(dataset, 8)) == 1
    with pytest.raises(MaeDetError, match="at least 1"):
        make_loader(dataset, 0)


def test_an_epoch_resumed_at_a_batch_gives_the_rest_of_that_epoch(odd_sizes) -> None:
    dataset = DetectionDataset(odd_sizes, TrainTransform(short_range=(30, 60), long_limit=100))
    loader = make_loader(dataset, 2, shuffle=True, seed=5)
    loader.set_epoch(3)
    assert len(loader) == loader.batches_per_epoch == 3
    whole = [(b.image_ids, b.pad_sizes, b.images) for b in loader]
    loader.set_epoch(0)
    _ = [b.image_ids for b in loader]  # another epoch in between changes nothing
    loader.set_epoch(3, start_batch=1)
    assert len(loader) == 2
    rest = [(b.image_ids, b.pad_sizes, b.images) for b in loader]
    assert [r[:2] for r in rest] == [w[:2] for w in whole[1:]]
    for (_, _, a), (_, _, b) in zip(rest, whole[1:], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(MaeDetError, match="an epoch has 3 batches"):
        loader.set_epoch(3, start_batch=4)


def test_an_image_announcing_gigapixels_is_one_sentence_before_and_during_training(odd_sizes, tmp_path: Path) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = tmp_path / "bomb.png"  # a valid PNG header for 20000 × 20000 pixels, a few bytes of data
    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    records = [dataclasses.replace(odd_sizes[0], path=bomb)]
    with pytest.raises(MaeDetError, match=r"bomb\.png"):
        check_images(records)
    with pytest.raises(MaeDetError, match=r"bomb\.png' is over [\d,]+ pixels; the limit is"):
        next(iter(make_loader(DetectionDataset(records, TrainTransform()), 1, workers=1)))
