"""Inputs that used to give a plausible but wrong result with exit 0 (issue 17.4): non-finite ground-truth boxes
and unusable normalisation metadata are refused in one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from maedet.errors import MaeDetError


def _annotations(path: Path, bbox: list) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path.write_text(json.dumps(data))  # json writes NaN and Infinity as the literals Python's reader accepts
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_ground_truth_boxes_are_refused(tmp_path: Path, bad: float) -> None:
    from maedet.detect.evaluate import load_annotations

    with pytest.raises(MaeDetError, match=r"holds -?(NaN|Infinity), which is not a finite number"):
        load_annotations(_annotations(tmp_path / "ann.json", [1, 1, bad, 10]))
    assert load_annotations(_annotations(tmp_path / "ok.json", [2, 2, 5, 5])).getAnnIds() == [5, 7]


def _detector_onnx(path: Path, mean: str, std: str) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    complete = {"task": "detection", "outputs": "detections", "num_classes": "80", "strides": "[8, 16, 32, 64, 128]",
                "input_size": "[3, 64, 64]", "input_dtype": "float32",
                "postprocess": '{"nms_pre": 1000, "score_thr": 0.05, "iou_thr": 0.6, "max_per_img": 100}'}  # fmt: skip
    for key, value in {**complete, "mean": mean, "std": std}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    ("mean", "std"),
    [("[NaN, 0.4, 0.4]", "[0.2, 0.2, 0.2]"), ("[0.4, 0.4, 0.4]", "[0, 0, 0]"), ("[0.4]", "[0.2, 0.2, 0.2]")],
)
def test_unusable_normalisation_metadata_is_refused(tmp_path: Path, mean: str, std: str) -> None:
    from maedet.detect.backends import OnnxBackend

    with pytest.raises(MaeDetError, match=r"unusable detector metadata: its (mean|std) is"):
        OnnxBackend(_detector_onnx(tmp_path / "d.onnx", mean, std))
