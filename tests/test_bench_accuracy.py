"""AP per format beside latency (``maedet-bench --detector DETECTOR --data --images``), on a case worked out by hand.

The labelled set is made from the detector itself: its PyTorch fp32 detections scoring >= LABEL_THRESHOLD on a few
synthetic images are written as the COCO annotations. PyTorch fp32 then scores AP 1.0 exactly (every labelled box
is one of its detections, at IoU 1, and all its other detections score lower), and every exported format is
scored against the same boxes through maedet.detect.evaluate, the code maedet-eval runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_STRUCTURE, make_shapes

from maedet.bench import BACKENDS, BenchSettings, unavailable_reason
from maedet.bench.accuracy import measure_formats
from maedet.bench.accuracy_formats import FORMATS, Format, file_timer, onnx_file, ort_backend
from maedet.bench.accuracy_results import AGREEMENT
from maedet.bench.cli import build_parser, main
from maedet.detect import TorchBackend, detect_images
from maedet.detect.evaluate import detections_to_results
from maedet.zoo import create_detector
from maedet.zoo.detector_folder import save_detector_folder

pytestmark = pytest.mark.slow  # exports, INT8 calibration and evaluations of a small detector: about a minute

SIZE = (64, 64)
LABEL_THRESHOLD = 0.3
CPU_FORMATS = "ort-fp32,ort-fp16,ort-int8-portable,ort-int8-cpu"
GPU_FORMATS = "ort-cuda-fp16,trt-int8"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small random detector (class 0 biased up, so it finds boxes) as a folder, images, and labels from it."""
    root = tmp_path_factory.mktemp("accuracy")
    shapes = make_shapes(root / "shapes", train=1, val=6, size=64)
    torch.manual_seed(0)
    detector = create_detector("gfl", structure=TINY_STRUCTURE, num_classes=2, fpn_channels=32, stacked_convs=1)
    with torch.no_grad():
        detector.head.cls_out.bias[0] = 2.0
    folder = root / "detector"
    folder.mkdir()
    save_detector_folder(detector, folder)
    images = shapes / "val"
    files = sorted(images.iterdir())
    backend = TorchBackend(create_detector(f"local-dir:{folder}"))
    backend.fixed_hw = SIZE
    results = detect_images(files, backend)
    ids = list(range(1, len(files) + 1))
    records = [r for r in detections_to_results(results, ids, [1, 2]) if r["score"] >= LABEL_THRESHOLD]
    assert records, "the detector must find something for the case to mean anything"
    labels = {
        "images": [{"id": i, "file_name": r.path.name, "width": r.width, "height": r.height}
                   for i, r in zip(ids, results, strict=True)],
        "annotations": [{"id": n, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
                         "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for n, r in enumerate(records, 1)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }  # fmt: skip
    data = root / "labels.json"
    data.write_text(json.dumps(labels))
    return {"folder": folder, "images": images, "data": data, "cache": root / "cache"}


def _settings(cache: Path) -> BenchSettings:
    return BenchSettings(warmup=1, rounds=1, min_rounds=1, iterations=1, max_time_s=None, threads=1, cache_dir=cache)


FAST = ("--warmup", "1", "--rounds", "1", "--min-rounds", "1", "--iterations", "1", "--threads", "1", "--no-progress")


def _cli(case: dict[str, Path], *args: str) -> list[str]:
    return ["--detector", str(case["folder"]), "--images", str(case["images"]), "--input-size", "64",
            "--cache-dir", str(case["cache"]), *FAST, *args]  # fmt: skip


def test_every_cpu_format_has_a_row_or_a_reason_and_onnx_fp32_matches_pytorch(case):
    report = measure_formats(
        str(case["folder"]), data=case["data"], images=case["images"], input_size=SIZE,
        formats=f"{CPU_FORMATS},{GPU_FORMATS}", settings=_settings(case["cache"]),
    )  # fmt: skip
    names = [r.format for r in report.rows]
    assert names[0] == "pytorch-fp32" and {"ort-fp32", "ort-int8-portable", "ort-int8-cpu"} <= set(names)
    asked = {"pytorch-fp32", *CPU_FORMATS.split(","), *GPU_FORMATS.split(",")}
    assert set(names) | {s.format for s in report.skipped} == asked and not set(names) & {
        s.format for s in report.skipped
    }
    assert all(s.reason for s in report.skipped)
    for row in report.skipped:  # a GPU format is skipped exactly when its bench backend says why it cannot run
        reason = unavailable_reason(BACKENDS[FORMATS[row.format].backend])
        assert reason is None or row.reason == reason
    assert report.row("pytorch-fp32").ap["AP"] == pytest.approx(1.0)  # worked out: the labels are its detections
    assert abs(report.row("ort-fp32").ap["AP"] - report.row("pytorch-fp32").ap["AP"]) <= 0.01
    for row in report.rows:
        assert all(0.0 <= row.ap[n] <= 1.0 for n in ("AP", "AP50", "AP75")), row
        assert row.ap_drop == pytest.approx(100 * (1.0 - row.ap["AP"]), abs=1e-6)
        assert row.latency is not None and row.latency.median > 0
    assert report.row("ort-int8-cpu").speedup_over == "ort-fp32" and report.row("ort-int8-cpu").speedup > 0
    for row in report.rows[1:]:  # every file was made through the pipeline into the bench's cache, never elsewhere
        assert Path(row.file).parent == case["cache"] and Path(row.file + ".record.json").is_file()


def test_pseudo_labels_score_pytorch_fp32_at_one_and_say_agreement(case):
    report = measure_formats(
        str(case["folder"]), images=case["images"], pseudo_labels=True, input_size=SIZE, formats="ort-fp32",
        settings=_settings(case["cache"]),
    )  # fmt: skip
    assert report.metric == AGREEMENT
    assert report.row("pytorch-fp32").ap["AP"] == pytest.approx(1.0)
    assert abs(report.row("ort-fp32").ap["AP"] - 1.0) <= 0.01
    row = report.to_dict()["rows"][0]
    assert "agreement_AP" in row and "AP" not in row and report.to_dict()["metric"] == "agreement with PyTorch fp32"


def test_the_gate_fails_naming_the_formats_then_passes_and_the_outputs_agree(case, tmp_path, capsys):
    out = {"--json": tmp_path / "r.json", "--csv": tmp_path / "r.csv", "--plot": tmp_path / "r.png"}
    outputs = [str(v) for pair in out.items() for v in pair]
    args = _cli(case, "--data", str(case["data"]), "--formats", "ort-fp32", *outputs)
    assert main([*args, "--max-ap-drop", "-1"]) == 1  # every format loses more than -1 points: all are named
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("maedet-bench: 2 formats lose more than -1 AP points") and "pytorch-fp32 (0.00)" in err
    assert "ort-fp32 (" in err
    assert all(path.is_file() for path in out.values())  # written before the gate says no
    assert main([*args, "--max-ap-drop", "100"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out["--json"].read_text())
    rows = list(csv.DictReader(out["--csv"].open()))
    assert report["metric"] == "accuracy" and [r["format"] for r in report["rows"]] == ["pytorch-fp32", "ort-fp32"]
    for row, line in zip(report["rows"], rows, strict=True):
        assert float(line["AP"]) == pytest.approx(row["AP"], abs=1e-6) and line["format"] == row["format"]
        assert float(line["latency_median_ms"]) == pytest.approx(row["latency_ms"]["median"], abs=1e-3)
        assert f"{100 * row['AP']:.1f}" in table and f"{row['drop_points']:+.2f}" in table
    assert out["--plot"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda-fp32", "ort-cuda-fp16", "ort-trt-fp16", "trt-fp32", "trt-fp16", "trt-int8"])
def test_gpu_formats_are_scored_and_timed(name, request):
    reason = unavailable_reason(BACKENDS[FORMATS[name].backend])
    if reason:
        pytest.skip(reason)
    case = request.getfixturevalue("case")
    report = measure_formats(
        str(case["folder"]), data=case["data"], images=case["images"], input_size=SIZE, formats=name,
        settings=_settings(case["cache"]),
    )  # fmt: skip
    assert not report.skipped, report.skipped
    row = report.row(name)
    assert all(0.0 <= row.ap[n] <= 1.0 for n in ("AP", "AP50", "AP75")) and row.detections > 0
    assert row.latency is not None and row.latency.median > 0 and row.device == "cuda"
    if row.precision == "fp32":
        assert abs(row.ap["AP"] - report.row("pytorch-fp32").ap["AP"]) <= 0.01


def test_a_new_format_is_one_registry_entry(case, monkeypatch):
    """The seam other runtimes (OpenVINO) join by: a name, the bench backend, how to make, load and time the file."""
    extra = Format("ort-fp32-again", "ort-cpu", "fp32", make=onnx_file, load=ort_backend, timer=file_timer,
                   speedup_over="ort-fp32")  # fmt: skip
    monkeypatch.setitem(FORMATS, extra.name, extra)
    report = measure_formats(
        str(case["folder"]), data=case["data"], images=case["images"], input_size=SIZE,
        formats="ort-fp32,ort-fp32-again", settings=_settings(case["cache"]),
    )  # fmt: skip
    again, first = report.row("ort-fp32-again"), report.row("ort-fp32")
    assert again.ap == first.ap and again.file == first.file  # the same request: the cached file is reused
    assert again.speedup is not None and again.speedup > 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "x.json", "--images", "."], "need the detector to measure: --detector DETECTOR"),
        (["--detector", "DIR"], "give --data val.json --images DIR"),
        (["--detector", "maedet_s_gfl", "--data", "D", "--images", "I"], "needs weights"),
        (["--detector", "no/such/folder", "--data", "D", "--images", "I"], "neither a detector folder"),
        (["--detector", "F", "--checkpoint", "D", "--data", "D", "--images", "I"], "--checkpoint goes with a name"),
        (["--detector", "F", "--images", "I", "--data", "D", "--formats", "ort-int3"], "unknown format 'ort-int3'"),
        (["--detector", "F", "--images", "I", "--data", "D", "--pseudo-labels"], "without --data"),
        (["--detector", "F", "--images", "I", "--pseudo-labels", "--score-threshold", "1.5"], "between 0 and 1"),
        (["--detector", "F", "--images", "I", "--data", "D", "--score-threshold", "0.5"], "goes with --pseudo-labels"),
        (["--detector", "F", "--images", "I", "--data", "D", "--calib", "no/such/dir"], "does not exist"),
        (["--detector", "F", "--images", "I", "--data", "D", "--input-size", "100"], "multiples of 32"),
        (["--detector", "F", "--images", "I", "--data", "D", "--models", "resnet50"], "belong to the zoo bench"),
    ],
)
def test_bad_input_is_one_sentence(case, args, says, capsys):
    paths = {"DIR": str(case["folder"]), "F": str(case["folder"]), "D": str(case["data"]), "I": str(case["images"])}
    argv = [paths.get(a, a) for a in args] + ["--cache-dir", str(case["cache"]), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("maedet-bench: error: ") and says in err, err


def test_plain_detector_flag_still_means_the_zoo_detectors():
    args = build_parser().parse_args(["--detector", "--quick"])
    assert args.detector is True and args.quick
    assert build_parser().parse_args(["--detector", "runs/x/detector"]).detector == "runs/x/detector"
