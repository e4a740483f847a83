"""What the exporter's options do (first asked for in issue 11): fp16 overflow in one sentence, the weights and
calibration recorded in the metadata, every refusal before any work, calibration images sampled and letterboxed as
inference does, any input size."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image

import maedet
from maedet.detect.run import read_image
from maedet.errors import MaeDetError
from maedet.export import ExportError, export_onnx, read_metadata
from maedet.export.check import compare_outputs, run_torch, synthetic_images
from maedet.export.cli import main
from maedet.export.metadata import METADATA_KEYS
from maedet.export.precision import DEFAULT_CALIB_IMAGES, calibration_batches, sample_files
from maedet.letterbox import collate, letterbox
from maedet.runtime import ort_session, run_session

pytestmark = pytest.mark.slow  # see make test-fast

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# A five-level MAE-DET small enough to export in a second: strides 2 (stem), 4, 8, 16, 32.
TINY = {
    "format": "maedet-structure/1",
    "blocks": [
        {"class": "ConvKXBNRELU", "in": 3, "out": 8, "s": 2, "k": 3},
        {"class": "SuperResK1KXK1", "in": 8, "out": 16, "s": 2, "k": 3, "L": 1, "btn": 8},
        {"class": "SuperResK1KXK1", "in": 16, "out": 16, "s": 2, "k": 3, "L": 1, "btn": 8},
        {"class": "SuperResK1KXK1", "in": 16, "out": 24, "s": 2, "k": 3, "L": 1, "btn": 8},
        {"class": "SuperResK1KXK1", "in": 24, "out": 32, "s": 2, "k": 3, "L": 1, "btn": 16},
    ],
}
HAS_TRT_STACK = (
    all(__import__("importlib").util.find_spec(m) is not None for m in ("tensorrt", "polygraphy"))
    and torch.cuda.is_available()
)


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_json(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def _stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _write_images(folder, count, size=(48, 40)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return sorted(folder.iterdir())


# ------------------------------------------------------------------------------------------- item 2: fp16 overflow
@pytest.fixture
def overflowing(tmp_path, tiny_json, random_bn):
    """The tiny net with random BN, its last block's BN scaled so C5 reaches ~1e6 (fp16 ends at 65504): the
    structure file and a checkpoint."""
    torch.manual_seed(0)
    model = random_bn(timm.create_model("maedet", structure=TINY), seed=2)
    last = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][-3:]
    with torch.no_grad():
        for bn in last:
            bn.weight.mul_(1e4)
    torch.save(model.state_dict(), tmp_path / "overflow.pth")
    return tiny_json, tmp_path / "overflow.pth"


def test_fp16_overflow_is_one_sentence_and_no_numpy_warning(tmp_path, overflowing, capfd):
    structure, weights = overflowing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any numpy RuntimeWarning fails the test
        result = export_onnx(
            "maedet", tmp_path / "o16.onnx", structure=structure, checkpoint=weights, input_size=(64, 64),
            precision="fp16",
        )  # fmt: skip
    c5 = run_session(ort_session(result.path), synthetic_images(1, 64, 64, MEAN, STD, seed=1234))["c5"]
    assert not np.isfinite(c5).all()  # the file really overflows
    assert not result.check.passed
    assert result.check["c5"].nonfinite > 0
    sentence = result.check.failure()
    assert "c5" in sentence and "overflowed fp16" in sentence and "\n" not in sentence
    as_json = json.dumps(result.check.to_dict(), allow_nan=False)  # strict JSON: no Infinity/NaN
    assert json.loads(as_json)["outputs"]["c5"]["cosine"] is None
    assert "RuntimeWarning" not in capfd.readouterr().err


def test_cli_fp16_overflow_says_so_without_warnings(tmp_path, overflowing, capfd):
    structure, weights = overflowing
    argv = ["maedet", "--structure", structure, "--checkpoint", weights, "--onnx", tmp_path / "o.onnx"]
    code = main([str(a) for a in argv] + ["--input-size", "64", "64", "--half"])
    err = capfd.readouterr().err
    assert code == 1, err
    failed = [line for line in err.splitlines() if "check failed" in line]
    assert len(failed) == 1 and "overflowed fp16" in failed[0], err
    assert "RuntimeWarning" not in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- item 6: weights, metadata
def _raw_props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_random_weights_warn_loudly_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    code = main(["maedet_s", "--onnx", str(out), "--input-size", "64", "64", "--no-check"])
    err = capsys.readouterr().err
    assert code == 0, err
    warned = [line for line in err.splitlines() if "RANDOM weights" in line]
    assert len(warned) == 1 and warned[0].startswith("maedet-export: warning: "), err
    assert read_metadata(out)["weights"] == "random"
    assert "weights_sha256" not in read_metadata(out)


def test_checkpoint_is_recorded_with_its_sha256_and_no_warning(tmp_path, capsys, authors_checkpoint_file):
    ckpt = authors_checkpoint_file("s")
    out = tmp_path / "s.onnx"
    code = main(["maedet_s", "--checkpoint", str(ckpt), "--onnx", str(out), "--input-size", "64", "64", "--no-check"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RANDOM" not in err
    meta = read_metadata(out)
    assert meta["weights"] == str(ckpt)
    assert meta["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_metadata_values_are_plain_strings(tmp_path):
    result = export_onnx("maedet_s", tmp_path / "s.onnx", input_size=(64, 64), precision="int8", calib_batches=1)
    props = _raw_props(result.path)
    assert props["model_name"] == "maedet_s" and props["precision"] == "int8" and props["weights"] == "random"
    assert props["color_order"] == "RGB" and props["pixel_scale"] == "1/255"
    assert props["int8_calibration"] == "synthetic" and props["int8_mode"] == "portable"
    assert not any(v.startswith('"') for v in props.values()), props
    assert json.loads(props["mean"]) == pytest.approx(list(MEAN)) and json.loads(props["input_size"]) == [3, 64, 64]
    assert set(result.metadata) <= set(METADATA_KEYS)  # (ONNX Runtime adds its own "onnx.infer")
    assert {k: v for k, v in read_metadata(result.path).items() if k in result.metadata} == result.metadata


def test_info_prints_plain_values(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    export_onnx("maedet_s", out, input_size=(64, 64), check=False)
    capsys.readouterr()
    assert main(["--info", str(out)]) == 0
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") == 3
    }  # fmt: skip  (--info is a result: stdout)
    assert rows["model_name"] == "maedet_s" and rows["weights"] == "random"
    assert rows["color_order"] == "RGB" and rows["pixel_scale"] == "1/255"


def test_older_files_with_json_quoted_text_still_read(tmp_path):
    """Files written before plain-text values stored every value as JSON; they read back the same."""
    result = export_onnx("maedet_s", tmp_path / "s.onnx", input_size=(64, 64), check=False)
    model = onnx.load(str(result.path))
    old = {p.key: json.dumps(read_metadata(model)[p.key]) for p in model.metadata_props}
    del model.metadata_props[:]
    for key, value in old.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert _raw_props(tmp_path / "old.onnx")["model_name"] == '"maedet_s"'
    assert read_metadata(tmp_path / "old.onnx") == result.metadata


def test_pretrained_from_a_local_copy_matches_the_checkpoint(tmp_path, authors_checkpoint_file):
    """--pretrained's code path (timm's pretrained loading) with timm's local-file overlay: same weights as
    --checkpoint of that file, and the tag plus the file's sha256 in the metadata."""
    ckpt = authors_checkpoint_file("s")
    kw = dict(input_size=(64, 64), check=False)
    pre = export_onnx(
        "maedet_s", tmp_path / "p.onnx", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)), **kw
    )
    via_ckpt = export_onnx("maedet_s", tmp_path / "c.onnx", checkpoint=ckpt, **kw)
    rand = export_onnx("maedet_s", tmp_path / "r.onnx", **kw)
    images = synthetic_images(1, 64, 64, MEAN, STD, seed=3)
    outs = {k: run_session(ort_session(r.path), images) for k, r in (("p", pre), ("c", via_ckpt), ("r", rand))}
    np.testing.assert_array_equal(outs["p"]["c5"], outs["c"]["c5"])
    assert not np.allclose(outs["p"]["c5"], outs["r"]["c5"])
    assert pre.metadata["weights"] == "maedet_s.gflv2_coco"
    assert pre.metadata["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_cli_pretrained_uses_the_cached_download(tmp_path, monkeypatch, capsys, authors_checkpoint_file):
    """``--pretrained`` through the zoo's cache: a file already at the model's own cache name needs no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "maedet_s-gflv2_coco-latest.pth").write_bytes(authors_checkpoint_file("s").read_bytes())
    out = tmp_path / "s.onnx"
    code = main(["maedet_s", "--pretrained", "--onnx", str(out), "--input-size", "64", "64", "--no-check"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RANDOM" not in err
    assert read_metadata(out)["weights"] == "maedet_s.gflv2_coco"


def test_cli_pretrained_download_failure_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: timm must download (no network)
    out = tmp_path / "s.onnx"
    code = main(["maedet_s", "--pretrained", "--onnx", str(out), "--input-size", "64", "64"])
    lines = _stderr_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1 and "could not download" in lines[0] and "--checkpoint" in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["maedet_s", "--pretrained", "--checkpoint", "w.pth"], "not allowed with argument"),
        (["maedet", "--structure", "maedet_s", "--pretrained"], "no pretrained weights"),
    ],
)
def test_pretrained_refusals(tmp_path, capsys, argv, expected):
    code = main([*argv, "--onnx", str(tmp_path / "o.onnx"), "--input-size", "64", "64"])
    lines = _stderr_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- item 12: checks first
def _refused_before_work(argv, capsys, folder, expected) -> None:
    """Exit 2, one stderr line even at -v (an export would log 'exporting ...' first), and nothing written."""
    before = sorted(p.name for p in folder.iterdir())
    code = main(["-v", *[str(a) for a in argv]])
    lines = _stderr_lines(capsys.readouterr().err)
    assert code == 2, lines
    assert len(lines) == 1 and expected in lines[0], lines
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.skipif(HAS_TRT_STACK, reason="TensorRT, Polygraphy and a GPU are here: the engine gets built")
def test_trt_without_tensorrt_is_refused_before_the_export(tmp_path, capsys):
    _refused_before_work(["maedet_s", "--trt", tmp_path / "s.engine"], capsys, tmp_path, "nothing was written")


def _paths_refused(argv, folder, expected) -> None:
    """The output-path rules alone: a machine without TensorRT says that first (test_export_tensorrt), so the
    paths are checked here on any machine through the CLI's own path check, before any work."""
    from maedet.export.cli import _check_paths, build_parser

    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ExportError, match=expected):
        _check_paths(build_parser().parse_args([str(a) for a in argv]))
    assert sorted(p.name for p in folder.iterdir()) == before


def test_engine_path_equal_to_onnx_path_is_refused(tmp_path):
    _paths_refused(["maedet_s", "--trt", tmp_path / "m.onnx"], tmp_path, "same file")
    same = tmp_path / "m.plan"
    _paths_refused(["maedet_s", "--trt", same, "--onnx", same], tmp_path, "same file")
    timing = ["maedet_s", "--trt", tmp_path / "m.engine", "--onnx", tmp_path / "m.onnx", "--timing-cache"]
    _paths_refused([*timing, tmp_path / "m.onnx"], tmp_path, "same file")


def test_trt_never_replaces_an_existing_onnx_file_unasked(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"the user's own file")
    _paths_refused(["maedet_s", "--trt", tmp_path / "m.engine"], tmp_path, "--onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's own file"


def test_bad_calibration_folders_are_refused_before_the_export(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.png").write_bytes(b"x")
    out = ["--onnx", tmp_path / "o.onnx", "--int8"]
    _refused_before_work(["maedet_s", *out, "--calib", tmp_path / "missing"], capsys, tmp_path, "does not exist")
    _refused_before_work(["maedet_s", *out, "--calib", tmp_path / "empty"], capsys, tmp_path, "holds no images")
    _refused_before_work(["maedet_s", *out, "--calib", tmp_path / "file.png"], capsys, tmp_path, "is not a folder")
    _write_images(tmp_path / "two", 2)
    two = ["maedet_s", *out, "--batch-size", "4", "--calib", tmp_path / "two"]
    _refused_before_work(two, capsys, tmp_path, "fewer than one batch of 4")


def test_api_refuses_a_bad_calibration_folder_before_building(tmp_path):
    with pytest.raises(ExportError, match="holds no images"):
        export_onnx("no_such_model_xyz", tmp_path / "o.onnx", precision="int8", calib=tmp_path)


# ------------------------------------------------------------------------------------------- item 13: calibration
def test_calibration_samples_across_the_folder_with_a_seed(tmp_path):
    files = _write_images(tmp_path / "imgs", 20)
    first = sample_files(files, 5, seed=0)
    assert first == sample_files(files, 5, seed=0)
    assert first != sample_files(files, 5, seed=1)
    assert first != files[:5] and len(set(first)) == 5
    assert sorted(sample_files(files, 50, seed=0)) == files  # a smaller folder: all of it, each once


def test_calibration_uses_the_inference_letterbox(tmp_path):
    files = _write_images(tmp_path / "imgs", 3, size=(48, 20))  # wide images: letterboxed, not stretched
    data, note = calibration_batches(
        calib=tmp_path / "imgs", batches=None, batch=1, input_size=(32, 40), mean=MEAN, std=STD, seed=7
    )
    assert len(data) == 3 and "3 of the 3 images" in note and "seed 7" in note
    picked = sample_files(files, 3, seed=7)
    for batch, path in zip(data, picked, strict=True):
        expected = collate([letterbox(read_image(path), fixed_hw=(32, 40))], MEAN, STD).numpy()
        np.testing.assert_array_equal(batch, expected)
        assert (batch[0, :, -1, :] == 0).all()  # the padding rows below the letterboxed image (after normalising)


def test_calibration_default_count(tmp_path):
    _write_images(tmp_path / "imgs", 10, size=(8, 8))
    data, _ = calibration_batches(calib=tmp_path / "imgs", batches=None, batch=3, input_size=(8, 8), mean=MEAN, std=STD)
    assert len(data) == 3  # as many full batches as the folder allows (9 of 10 images)
    assert DEFAULT_CALIB_IMAGES >= 128


def test_cli_logs_the_images_used_and_records_them(tmp_path, capsys):
    _write_images(tmp_path / "imgs", 5)
    out = tmp_path / "s8.onnx"
    argv = ["maedet_s", "--onnx", out, "--input-size", "64", "64", "--int8", "--calib", tmp_path / "imgs"]
    code = main(["-v", *[str(a) for a in argv], "--calib-seed", "3", "--no-check"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "calibrated on 5 of the 5 images" in err and "synthetic" not in err
    assert read_metadata(out)["int8_calibration"] == f"5 images from {tmp_path / 'imgs'}, seed 3"


def test_huge_calibration_image_is_one_sentence(tmp_path, monkeypatch):
    _write_images(tmp_path / "imgs", 1, size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 4096-pixel image is now a "bomb"
    data, _ = calibration_batches(calib=tmp_path / "imgs", batches=1, batch=1, input_size=(32, 32), mean=MEAN, std=STD)
    with pytest.raises(MaeDetError, match=r"img000\.png' is (64×64|over 2,000) pixels; the limit is 1,000 pixels"):
        data[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between 1× and 2× the limit: PIL only warns; refused too
    with pytest.raises(MaeDetError, match="the limit is 3,000 pixels"):
        data[0]


# ------------------------------------------------------------------------------------------- any input size
def test_export_at_a_size_not_divisible_by_32(tmp_path, random_bn):
    torch.manual_seed(0)
    model = random_bn(timm.create_model("maedet", structure=TINY, features_only=True), seed=4)
    result = export_onnx(model, tmp_path / "odd.onnx", input_size=(333, 517), dynamic=True)
    assert result.check.passed, result.check.to_dict()
    assert result.check["c5"].shape == (1, 32, 11, 17)  # ceil(333/32), ceil(517/32)
    images = synthetic_images(1, 225, 300, MEAN, STD, seed=9)  # the dynamic file at another odd size
    ref = run_torch(maedet.fuse_bn(model), images, result.output_names)
    report = compare_outputs(ref, run_session(ort_session(result.path), images), "fp32")
    assert report.passed, report.to_dict()


def test_input_size_bounds_are_kept(tmp_path):
    with pytest.raises(ExportError, match="too small"):
        export_onnx("maedet_s", tmp_path / "o.onnx", input_size=(31, 64))
    with pytest.raises(ExportError, match="too large"):
        export_onnx("maedet_s", tmp_path / "o.onnx", input_size=(64, 100000))


def test_random_bn_helper_makes_residual_branches_count(random_bn):
    """The helper the parity tests use: after it, no BN scale is zero (timm zero-inits each branch's last one)."""
    torch.manual_seed(0)
    model = timm.create_model("maedet", structure=TINY)
    scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any((w == 0).all() for w in scales)
    random_bn(model)
    assert all((w > 0).all() for w in scales)
