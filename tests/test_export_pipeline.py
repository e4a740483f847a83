"""One export pipeline for every kind of model (issue 18): the drifts between the backbone and detector paths are
gone by construction — one opset rule, one operator-set list, one calibration (seeded, same default), one result
type, one metadata schema, one engine check — and one table says which option applies to which kind."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from PIL import Image
from test_export_detector import tiny_detector

from maedet.export import ExportError, check_engine, export_detector_onnx, export_onnx, read_metadata
from maedet.export.cli import main
from maedet.export.precision import calibration_files, sample_files
from maedet.export.validate import supported_opsets
from maedet.runtime import ort_session, run_session

SIZE = (64, 64)


def _calib_folder(root, count: int):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _backbone(path, **kwargs):
    return export_onnx("maedet_s", path, input_size=SIZE, **kwargs)


def _detector(path, **kwargs):
    return export_detector_onnx(tiny_detector(), path, input_size=SIZE, **kwargs)


def test_one_opset_rule_for_every_kind(tmp_path) -> None:
    """Before: the detector path wrote opset 22 files, which the backbone path refuses."""
    too_new = supported_opsets()[1] + 2
    with pytest.raises(ExportError) as backbone:
        _backbone(tmp_path / "b.onnx", opset=too_new, check=False)
    with pytest.raises(ExportError) as detector:
        _detector(tmp_path / "d.onnx", opset=too_new, check=False)
    for refused in (backbone, detector):  # one rule; a detector's graph needs opset 13 or newer, so its range says so
        text = str(refused.value)
        assert text.startswith(f"opset {too_new} is outside what the installed exporter writes (") and text.endswith(
            f"..{too_new - 2}; 17 or newer advised)."
        )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_nms_file_lists_each_operator_set_once(tmp_path, precision) -> None:
    """Before: joining the network and its NMS graph listed ONNX's own operator set twice."""
    result = _detector(tmp_path / "d.onnx", precision=precision, opset=17, check=False)
    imports = onnx.load(str(result.path)).opset_import
    domains = ["" if o.domain in ("", "ai.onnx") else o.domain for o in imports]
    assert len(domains) == len(set(domains)), [(o.domain, o.version) for o in imports]
    assert {o.version for o in imports if o.domain in ("", "ai.onnx")} == {17}


def test_calib_seed_picks_the_detector_calibration_images(tmp_path) -> None:
    """Before: the detector path ignored --calib-seed (always seed 0)."""
    folder = _calib_folder(tmp_path / "calib", 6)
    files = calibration_files(folder)
    other = next(s for s in range(2, 40) if sample_files(files, 1, s) != sample_files(files, 1, 1))
    seeds = [1, other]
    scales = []
    for seed in seeds:
        result = _detector(tmp_path / f"s{seed}.onnx", precision="int8", calib=folder, calib_batches=1,
                           calib_seed=seed, check=False)  # fmt: skip
        assert result.metadata["int8_calibration"] == f"1 images from {folder}, seed {seed}"
        assert f"sampled with seed {seed}" in result.notes[0]
        model = onnx.load(str(result.path))
        scales.append({i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if "scale" in i.name})
    assert scales[0].keys() == scales[1].keys()
    assert any(not np.array_equal(scales[0][k], scales[1][k]) for k in scales[0])  # other images, other scales


def test_default_calibration_is_the_same_for_every_kind(tmp_path) -> None:
    """Before: 8 batches by default in the detector API, 128 images (all of a smaller folder) from the CLI."""
    folder = _calib_folder(tmp_path / "calib", 12)
    result = _detector(tmp_path / "d.onnx", precision="int8", calib=folder, check=False)
    assert result.notes[0].startswith("INT8 calibrated on 12 of the 12 images"), result.notes


def test_one_result_and_one_metadata_schema_for_every_kind(tmp_path) -> None:
    """Before: ``warnings`` on backbone results, ``notes`` on detector results, and detector files missing keys
    every backbone file carries (output_names, io_dtype, int8_calibration)."""
    backbone = _backbone(tmp_path / "b.onnx", precision="int8", check=False)
    detector = _detector(tmp_path / "d.onnx", precision="int8", check=False)
    assert type(backbone) is type(detector)
    assert "synthetic" in backbone.notes[0] and "synthetic" in detector.notes[0]
    backbone_only = {"structure", "output_strides"}
    detector_only = {"task", "input_dtype", "num_classes", "cls_channels", "strides", "postprocess"}
    assert set(backbone.metadata) - backbone_only == set(detector.metadata) - detector_only
    assert read_metadata(detector.path)["output_names"] == ["num_dets", "boxes", "scores", "labels"]


class _OrtInTensorRTsPlace:
    """ONNX Runtime running the file where the engine would (TensorRT cannot run here): what is under test is the
    check's judgement of the engine's outputs, which is the same whatever produced them."""

    def __init__(self, path, shift: float = 0.0) -> None:
        self.session = ort_session(path)
        self.shift = shift

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = run_session(self.session, images)
        if "boxes" in outputs:
            outputs["boxes"] = outputs["boxes"] + self.shift
        return outputs


def test_one_engine_check_and_report_for_every_kind(tmp_path) -> None:
    """Before: check_engine returned a report for backbones, check_detector_engine a dict for detectors."""
    backbone = _backbone(tmp_path / "b.onnx", check=False).path
    detector = export_detector_onnx(tiny_detector(), tmp_path / "d.onnx", input_size=(64, 96), check=False).path
    raw = _detector(tmp_path / "raw.onnx", nms=False, check=False).path
    reports = {p.stem: check_engine(_OrtInTensorRTsPlace(p), p) for p in (backbone, detector, raw)}
    assert len({type(r) for r in reports.values()}) == 1 and all(r.passed for r in reports.values())
    assert reports["d"].detections is not None and reports["d"].detections.detections > 0
    assert reports["b"].detections is None and reports["b"].outputs and reports["raw"].outputs
    shifted = check_engine(_OrtInTensorRTsPlace(detector, shift=5.0), detector)
    assert not shifted.passed and shifted.to_dict()["detections"]["passed"] is False
    assert "detections differ" in shifted.failure()


def test_every_option_has_one_row_in_the_applicability_table() -> None:
    from maedet.export.request import APPLIES, KINDS, ExportRequest

    assert set(APPLIES) == {f.name for f in dataclasses.fields(ExportRequest)}
    assert all(kinds and kinds <= set(KINDS) for kinds in APPLIES.values())


@pytest.mark.parametrize(
    ("kind", "option", "expected"),
    [
        ("backbone", {"nms": False}, "--no-nms apply to detectors, not to backbones."),
        ("backbone", {"embed_preprocess": True}, "--embed-preprocess apply to detectors, not to backbones."),
        ("detector", {"io_half": True, "precision": "fp16"}, "--io-half apply to backbones, not to detectors."),
        ("detector", {"out_indices": (1, 2)}, "--out-indices apply to backbones, not to detectors."),
        ("detector", {"calib_seed": 3}, "--calib-seed needs --int8 (precision 'int8')."),
    ],
)
def test_an_option_for_another_kind_is_one_sentence(tmp_path, kind, option, expected) -> None:
    export = _backbone if kind == "backbone" else _detector
    with pytest.raises(ExportError) as refused:
        export(tmp_path / "x.onnx", **option)
    assert str(refused.value) == expected
    assert not (tmp_path / "x.onnx").exists()


def test_batch_size_flag_and_its_old_spelling(tmp_path, capsys) -> None:
    """Issue 18 item 7: --batch-size; --batch still works for one release and says which flag to use."""
    common = ["maedet_s", "--input-size", "64", "--no-check", "-q"]
    assert main([*common, "--batch-size", "2", "--onnx", str(tmp_path / "a.onnx")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*common, "--batch", "3", "--onnx", str(tmp_path / "b.onnx")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    old = "maedet-export: warning: --batch is an old spelling; use --batch-size (the old one goes in the next release)."
    assert warned == [old]
    assert read_metadata(tmp_path / "a.onnx")["batch"] == 2 and read_metadata(tmp_path / "b.onnx")["batch"] == 3
