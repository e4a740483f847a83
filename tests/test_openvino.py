"""OpenVINO: the IR maedet-export writes matches PyTorch (backbone, detector, INT8), the bench's ov-cpu rows run,
maedet-detect/eval on an IR give the ONNX file's detections, and every failure is one sentence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from maedet.errors import MaeDetError

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'maedet[openvino]')")

from maedet.detect.backends import load_backend  # noqa: E402
from maedet.detect.cli import detect_main, eval_main  # noqa: E402
from maedet.export import export_onnx  # noqa: E402
from maedet.export.check import synthetic_images  # noqa: E402
from maedet.export.cli import main as export_main  # noqa: E402
from maedet.export.openvino import read_ir_metadata  # noqa: E402
from maedet.openvino_runtime import OvRunner, ov_compile, ov_run  # noqa: E402
from maedet.runtime import ort_session, run_session  # noqa: E402

pytestmark = pytest.mark.slow  # see make test-fast

SIZE = (64, 64)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def model_m(random_bn):
    """MAE-DET-M with random BN (a fresh model's zero-initialised branches would make parity trivial)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    return random_bn(timm.create_model("maedet_m", features_only=True)).eval()


@pytest.fixture(scope="module")
def backbone_ir(model_m, tmp_path_factory):
    root = tmp_path_factory.mktemp("ov")
    return export_onnx(model_m, root / "m.onnx", input_size=SIZE, openvino=root / "m_ir")


def test_backbone_ir_matches_pytorch_and_the_onnx_file(backbone_ir) -> None:
    check = backbone_ir.openvino_check
    assert check.passed and check.providers == ["OpenVINO CPU"]
    assert set(check.outputs) == {"c2", "c3", "c4", "c5"}
    assert all(o.max_rel <= 1e-4 and o.cosine > 0.99999 for o in check.outputs.values())
    folder = backbone_ir.openvino.parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
    images = synthetic_images(2, *SIZE, MEAN, STD, seed=9)[:1]
    from_ir = ov_run(ov_compile(folder, threads=1), images)
    from_onnx = run_session(ort_session(backbone_ir.path), images)
    assert list(from_ir) == list(from_onnx) == ["c2", "c3", "c4", "c5"]  # the file's output order
    for name, ref in from_onnx.items():
        assert np.abs(from_ir[name] - ref).max() <= 1e-4 * np.abs(ref).max()


def test_ir_carries_the_onnx_metadata(backbone_ir) -> None:
    meta = read_ir_metadata(backbone_ir.openvino.parent)
    assert meta == backbone_ir.metadata  # normalisation, strides, names: the same values, decoded the same way
    assert meta["mean"] == list(MEAN) and meta["output_strides"] == [4, 8, 16, 32]


def test_runner_is_ready_to_time(backbone_ir) -> None:
    images = synthetic_images(1, *SIZE, MEAN, STD, seed=3)
    compiled = ov_compile(backbone_ir.openvino, threads=1, denormals_as_zero=True)
    runner = OvRunner(compiled, images)
    runner()
    output = runner.request.get_output_tensor(0).data
    assert np.array_equal(output, ov_run(compiled, images)["c2"])  # the input set once is the one run
    runner.close()


def test_int8_ir_matches_pytorch_at_the_int8_tolerance(model_m, tmp_path) -> None:
    result = export_onnx(
        model_m, tmp_path / "m8.onnx", input_size=SIZE, precision="int8", calib_batches=2, openvino=tmp_path / "m8"
    )
    assert result.check.passed and result.openvino_check.passed
    assert all(o.cosine >= 0.95 for o in result.openvino_check.outputs.values())
    assert read_ir_metadata(tmp_path / "m8")["precision"] == "int8"
    xml = (tmp_path / "m8" / "model.xml").read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml or 'element_type="i8"' in xml  # Q/DQ kept as INT8


# ------------------------------------------------------------------------------------------- detectors
@pytest.fixture(scope="module")
def detector_s(tmp_path_factory, authors_detector_state):
    """MAE-DET-S GFocalV2 for 3 classes (random, norms randomised, biases that let boxes through), with and
    without NMS, as ONNX files and IRs."""
    root = tmp_path_factory.mktemp("ov_det")
    state = authors_detector_state("maedet_s_gfl", seed=5, num_classes=3)
    state["bbox_head.gfl_cls.bias"] = torch.tensor([-1.0, -1.5, -2.0, -1.0])
    ckpt = root / "latest.pth"
    torch.save({"state_dict": state}, ckpt)
    results = {}
    for nms in (True, False):
        name = "nms" if nms else "raw"
        results[name] = export_onnx("maedet_s_gfl", root / f"{name}.onnx", checkpoint=ckpt, num_classes=3,
                                    input_size=(256, 320), dynamic=True, nms=nms, openvino=root / name)  # fmt: skip
    return root, results


def test_detector_irs_match_pytorch_with_and_without_nms(detector_s) -> None:
    _, results = detector_s
    with_nms = results["nms"].openvino_check
    assert with_nms.passed and with_nms.raw.providers == ["OpenVINO CPU"]
    assert with_nms.detections.detections > 0 and with_nms.detections.passed  # OpenVINO's NMS: the same boxes
    assert with_nms.probe.detections > 10 and with_nms.probe.passed
    raw = results["raw"].openvino_check
    assert raw.passed and raw.detections is None and len(raw.raw.outputs) == 10


def _images(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for name, hw in (("a.png", (240, 320)), ("b.png", (200, 130))):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(folder / name)
        paths.append(str(folder / name))
    return paths


@pytest.mark.parametrize("form", ["nms", "raw"])
def test_detect_on_the_ir_gives_the_onnx_files_detections(detector_s, form, tmp_path) -> None:
    root, _ = detector_s
    images = [*_images(tmp_path), "--test-scale", "320", "256", "--no-draw"]
    assert detect_main([*images, "--onnx", str(root / f"{form}.onnx"), "--out", str(tmp_path / "onnx")]) == 0
    assert detect_main([*images, "--openvino", str(root / form), "--out", str(tmp_path / "ov")]) == 0
    onnx_doc, ov_doc = (json.loads((tmp_path / d / "detections.json").read_text()) for d in ("onnx", "ov"))
    a = sorted((d["image_id"], -d["score"], d["category_id"], *d["bbox"]) for d in onnx_doc["annotations"])
    b = sorted((d["image_id"], -d["score"], d["category_id"], *d["bbox"]) for d in ov_doc["annotations"])
    assert 10 < len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0] and abs(x[1] - y[1]) < 1e-4 and np.allclose(x[3:], y[3:], rtol=1e-3, atol=1e-2)


def test_eval_on_the_ir_gives_the_onnx_files_ap(detector_s, tmp_path) -> None:
    root, _ = detector_s
    paths = _images(tmp_path)
    images = [{"id": i, "file_name": Path(p).name, "height": h, "width": w}
              for i, (p, (h, w)) in enumerate(zip(paths, [(240, 320), (200, 130)], strict=True), start=1)]  # fmt: skip
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 60, 60], "area": 3600, "iscrowd": 0}
            for i in (1, 2)]  # fmt: skip
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    common = ["--ann", str(ann), "--images", str(tmp_path), "--test-scale", "320", "256"]
    assert eval_main([*common, "--onnx", str(root / "nms.onnx"), "--json", str(tmp_path / "onnx.json")]) == 0
    assert eval_main([*common, "--openvino", str(root / "nms"), "--json", str(tmp_path / "ov.json")]) == 0
    onnx_ap, ov_ap = (json.loads((tmp_path / f).read_text()) for f in ("onnx.json", "ov.json"))
    assert ov_ap["detections"] == onnx_ap["detections"] > 0
    assert ov_ap["AP"] == pytest.approx(onnx_ap["AP"], abs=1e-6)


def test_ir_backend_has_the_onnx_backends_contract(detector_s) -> None:
    root, _ = detector_s
    ov, ox = load_backend(openvino=root / "nms"), load_backend(onnx=root / "nms.onnx")
    for attr in ("name", "num_classes", "mean", "std", "fixed_hw", "max_batch", "input_uint8", "raw", "cfg"):
        assert getattr(ov, attr) == getattr(ox, attr), attr


# ------------------------------------------------------------------------------------------- the bench
def test_bench_openvino_rows_run(tmp_path) -> None:
    from maedet.bench import run_bench

    result = run_bench(models=["maedet_s"], backends="ort-cpu,ov-cpu,ov-cpu-int8,ov-cpu-int8-nncf",
                       input_sizes=[SIZE], batch_sizes=[1], threads=1, warmup=1, rounds=2, min_rounds=2,
                       iterations=2, max_time_s=None, cache_dir=tmp_path / "cache")  # fmt: skip
    rows = {r.backend: r for r in result.results}
    assert set(rows) == {"ort-cpu", "ov-cpu", "ov-cpu-int8", "ov-cpu-int8-nncf"} and not result.skipped
    assert all(r.latency.median > 0 and r.latency.samples > 0 for r in rows.values())
    assert list((tmp_path / "cache").glob("*-nncfsynthetic-ov*/model.xml"))  # NNCF's IR, cached beside the ONNX files


def test_cpu_all_holds_the_openvino_rows_but_not_the_default_pair() -> None:
    from maedet.bench.backends import CPU_DEFAULT, resolve_backends

    names = resolve_backends("cpu-all")
    assert {"ov-cpu", "ov-cpu-int8"} <= set(names) and "ov-cpu-int8-nncf" not in names
    assert not {"ov-cpu", "ov-cpu-int8"} & set(CPU_DEFAULT)


# ------------------------------------------------------------------------------------------- errors
def test_a_folder_without_an_ir_is_one_sentence(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    code = detect_main([str(tmp_path / "a.png"), "--openvino", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds no OpenVINO IR" in err and "maedet-export MODEL --openvino DIR" in err
    with pytest.raises(MaeDetError, match="does not exist"):
        load_backend(openvino=tmp_path / "nope")


def test_a_damaged_ir_is_one_sentence(backbone_ir, tmp_path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.xml").write_text("<net name='x'><layers>")
    (tmp_path / "bad" / "model.bin").write_bytes(b"")
    with pytest.raises(MaeDetError, match=r"^OpenVINO cannot read") as info:
        load_backend(openvino=tmp_path / "bad")
    assert "\n" not in str(info.value) and "Exception from" not in str(info.value)
    with pytest.raises(MaeDetError, match="is not a detector export"):
        load_backend(openvino=backbone_ir.openvino.parent)


def test_export_refuses_a_file_as_the_ir_folder_before_exporting(tmp_path, capsys) -> None:
    (tmp_path / "taken").write_text("x")
    code = export_main(["maedet_s", "--openvino", str(tmp_path / "taken"), "--input-size", "64"])
    assert code == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "taken.onnx").exists()


_WITHOUT_OPENVINO = "import sys; sys.modules['openvino'] = None; sys.modules['nncf'] = None; "


def _without_openvino(code: str) -> subprocess.CompletedProcess:
    """Python with openvino unimportable (as on a machine without the extra): no mock of OpenVINO itself."""
    return subprocess.run([sys.executable, "-c", _WITHOUT_OPENVINO + code], capture_output=True, text=True, timeout=300)


def test_without_openvino_every_path_says_so_with_the_install_hint(tmp_path) -> None:
    export = _without_openvino(
        f"from maedet.export.cli import main; sys.exit(main(['maedet_s', '--openvino', {str(tmp_path / 'ir')!r}, "
        "'--input-size', '64']))"
    )
    assert export.returncode == 2, export.stderr
    line = export.stderr.strip().splitlines()[-1]
    assert line == "maedet-export: error: OpenVINO is not installed: pip install 'maedet[openvino]'."
    assert not list(tmp_path.iterdir())  # refused before the export: nothing written
    bench = _without_openvino("from maedet.bench.cli import main; sys.exit(main(['--list-backends']))")
    assert bench.returncode == 0
    rows = [line for line in bench.stdout.splitlines() if "ov-cpu" in line]
    assert len(rows) == 3 and all("skipped (1)" in line for line in rows)
    assert "(1) OpenVINO is not installed" in bench.stdout
    assert "to fix (1): pip install 'maedet[openvino]'" in bench.stdout
    detect = _without_openvino(
        f"from maedet.detect.backends import load_backend; load_backend(openvino={str(tmp_path)!r})"
    )
    assert "MissingDependencyError: OpenVINO is not installed: pip install 'maedet[openvino]'." in detect.stderr


# ------------------------------------------------------------------------------------------- the latency profile
OV_TINY = {"backend": "ov-cpu", "input_size": 64, "train_nets": 2, "calibration_nets": 2, "validation_nets": 2}
OV_TINY |= {"rounds": 2, "threads": 1}


def test_a_profiled_network_in_openvino_times_every_operator(tmp_path) -> None:
    """OpenVINO's per-node counters name the exporter's block operators too: every conv and pool gets time."""
    from maedet.bench.profile import ProfileSettings
    from maedet.bench.profile_measure import Measurer, structure_op_keys
    from maedet.zoo import load_structure

    structure = load_structure("maedet_s")
    timing = Measurer(ProfileSettings(**OV_TINY), tmp_path).network(structure, profiled=True)
    expected = {k for k, op in structure_op_keys(structure, 64).items() if op.role != "add"}
    assert expected <= set(timing.ops) and len(timing.times) == 2
    for run in range(2):
        attributed = sum(v[run] for v in timing.ops.values())
        assert 0.3 * timing.times[run] < attributed <= 1.1 * timing.times[run]  # kernels: most of each run


def test_tiny_openvino_profile_gives_a_latency_table(tmp_path) -> None:
    from maedet.bench.profile import ProfileSettings, profile_target
    from maedet.zoo import load_structure
    from maedet.zoo.latency import load_latency_table

    out = tmp_path / "ov.json"
    table = profile_target(out, ProfileSettings(**OV_TINY), progress=False)
    again = load_latency_table(out)
    assert again.target["backend"] == "ov-cpu" and again.target["input_size"] == 64
    assert again.measurement["anchor"]["quiet_ms"] > 0 and again.validation["count"] == 2 + 3
    for row in again.validation["networks"]:
        assert row["measured_ms"] > 0
        assert row["predicted_ms"] == pytest.approx(table.predict_ms(load_structure(row["structure"])))


def test_export_info_reads_an_ir_folder(backbone_ir, capsys) -> None:
    assert export_main(["--info", str(backbone_ir.openvino.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == backbone_ir.metadata


def test_the_onnx_file_derived_from_the_ir_folder_never_replaces_one(tmp_path, capsys) -> None:
    (tmp_path / "ir.onnx").write_bytes(b"mine")
    assert export_main(["maedet_s", "--openvino", str(tmp_path / "ir"), "--input-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "--openvino" in err and "would replace" in err and f"--onnx {tmp_path / 'ir.onnx'}" in err
    assert (tmp_path / "ir.onnx").read_bytes() == b"mine" and not (tmp_path / "ir").exists()
