"""ONNX export parity (S/M/L, features and logits, static and dynamic shapes), metadata and the --info CLI."""

from __future__ import annotations

import json

import onnx
import pytest
import timm
import torch

import maedet
from maedet.export import TOLERANCES, export_onnx, read_metadata
from maedet.export.check import compare_outputs, run_torch, synthetic_images
from maedet.export.cli import main
from maedet.runtime import ort_session, run_session
from maedet.zoo import builtin_structure

pytestmark = pytest.mark.slow  # see make test-fast

VARIANTS = ["maedet_s", "maedet_m", "maedet_l"]
SIZE = (64, 64)


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(2)


def _static_dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _parity(onnx_file, module, names, shape, seed=5):
    images = synthetic_images(shape[0], shape[2], shape[3], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed)
    session = ort_session(onnx_file, threads=2)
    return compare_outputs(run_torch(module, images, names), run_session(session, images), "fp32")


def _assert_fp32_parity(report):
    assert report.passed, report.to_dict()
    for out in report.outputs.values():
        assert out.max_rel <= TOLERANCES["fp32"].max_rel
        assert out.cosine > 0.999999


@pytest.fixture(scope="module", params=VARIANTS)
def exported(request, tmp_path_factory, random_bn):
    """Each variant built once (features and classifier, random BN so every residual branch counts), exported four
    ways: features/logits × static/dynamic."""
    name = request.param
    torch.manual_seed(0)
    features = random_bn(timm.create_model(name, features_only=True), seed=0).eval()
    torch.manual_seed(1)
    classifier = random_bn(timm.create_model(name, num_classes=10), seed=1).eval()
    folder = tmp_path_factory.mktemp(name)
    files = {
        "features_static": export_onnx(features, folder / "fs.onnx", input_size=SIZE),
        "features_dynamic": export_onnx(features, folder / "fd.onnx", input_size=SIZE, dynamic=True),
        "logits_static": export_onnx(classifier, folder / "ls.onnx", input_size=SIZE, outputs="logits", batch=2),
        "logits_dynamic": export_onnx(classifier, folder / "ld.onnx", input_size=SIZE, outputs="logits", dynamic=True),
    }
    return name, maedet.fuse_bn(features), maedet.fuse_bn(classifier), files


def test_features_static_match_pytorch(exported):
    name, _, _, files = exported
    result = files["features_static"]
    assert result.output_names == ["c2", "c3", "c4", "c5"]
    _assert_fp32_parity(result.check)
    graph = onnx.load(str(result.path)).graph
    assert [o.name for o in graph.output] == ["c2", "c3", "c4", "c5"]
    assert _static_dims(graph.input[0]) == [1, 3, 64, 64]
    channels = [p.num_chs for p in builtin_structure(name).feature_points()]
    for out, stride, chs in zip(graph.output, (4, 8, 16, 32), channels, strict=True):
        assert _static_dims(out) == [1, chs, 64 // stride, 64 // stride]


def test_metadata_round_trip(exported):
    name, _, _, files = exported
    result = files["features_static"]
    meta = read_metadata(result.path)
    assert meta == result.metadata
    assert meta["model_name"] == name
    assert meta["output_names"] == ["c2", "c3", "c4", "c5"]
    assert meta["output_strides"] == [4, 8, 16, 32]
    assert meta["input_size"] == [3, 64, 64]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["precision"] == "fp32"
    assert meta["dynamic"] is False
    assert meta["maedet_version"] == maedet.__version__
    assert builtin_structure(name).to_dict() == meta["structure"]
    assert read_metadata(files["logits_dynamic"].path)["outputs"] == "logits"


def test_bn_is_folded(exported):
    ops = {n.op_type for n in onnx.load(str(exported[3]["features_static"].path)).graph.node}
    assert "BatchNormalization" not in ops
    assert "Conv" in ops


def test_features_dynamic_match_pytorch_at_other_shapes(exported):
    _, reference, _, files = exported
    result = files["features_dynamic"]
    _assert_fp32_parity(result.check)
    graph = onnx.load(str(result.path)).graph
    assert _static_dims(graph.input[0]) == ["batch", 3, "height", "width"]
    for shape in [(2, 3, 64, 96), (1, 3, 96, 64)]:
        report = _parity(result.path, reference, result.output_names, shape)
        _assert_fp32_parity(report)
        assert report["c5"].shape[2:] == (shape[2] // 32, shape[3] // 32)


def test_logits_static_match_pytorch(exported):
    _, _, reference, files = exported
    result = files["logits_static"]
    assert result.output_names == ["logits"]
    _assert_fp32_parity(result.check)
    assert _static_dims(onnx.load(str(result.path)).graph.output[0]) == [2, 10]
    _assert_fp32_parity(_parity(result.path, reference, ["logits"], (2, 3, 64, 64)))


def test_logits_dynamic_match_pytorch_at_other_shapes(exported):
    _, _, reference, files = exported
    result = files["logits_dynamic"]
    _assert_fp32_parity(result.check)
    for shape in [(3, 3, 96, 64)]:  # the export shape is covered by result.check
        report = _parity(result.path, reference, ["logits"], shape)
        _assert_fp32_parity(report)
        assert report["logits"].shape == (shape[0], 10)


def _random_checkpoint(path, name, random_bn, **kwargs):
    """A checkpoint of ``name`` with random BN, so exports by name are checked with every branch live."""
    torch.manual_seed(7)
    torch.save(random_bn(timm.create_model(name, **kwargs), seed=7).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def s_weights(tmp_path_factory, random_bn):
    return _random_checkpoint(tmp_path_factory.mktemp("w") / "s.pth", "maedet_s", random_bn)


def test_export_by_name_builds_the_registered_model(tmp_path, random_bn):
    ckpt = _random_checkpoint(tmp_path / "s5.pth", "maedet_s", random_bn, num_classes=5)
    result = export_onnx(
        "maedet_s", tmp_path / "s.onnx", input_size=SIZE, outputs="logits", num_classes=5, checkpoint=ckpt
    )
    _assert_fp32_parity(result.check)
    assert _static_dims(onnx.load(str(result.path)).graph.output[0]) == [1, 5]
    assert result.metadata["model_name"] == "maedet_s"
    assert result.metadata["structure"] == builtin_structure("maedet_s").to_dict()


def test_timm_model_defaults_to_strides_4_to_32(tmp_path, random_bn):
    ckpt = _random_checkpoint(tmp_path / "r18.pth", "resnet18", random_bn)
    result = export_onnx("resnet18", tmp_path / "r18.onnx", input_size=SIZE, checkpoint=ckpt)
    assert result.output_names == ["c2", "c3", "c4", "c5"]
    assert result.metadata["output_strides"] == [4, 8, 16, 32]
    assert result.metadata["structure"] is None
    _assert_fp32_parity(result.check)


def test_out_indices_pick_levels(tmp_path, s_weights):
    result = export_onnx("maedet_s", tmp_path / "s.onnx", input_size=SIZE, out_indices=(2, 3), checkpoint=s_weights)
    assert result.output_names == ["c4", "c5"]
    assert result.metadata["output_strides"] == [16, 32]
    _assert_fp32_parity(result.check)


def test_structure_file_and_checkpoint(tmp_path, random_bn):
    """A searched structure plus our own checkpoint: the exported file computes with those weights."""
    structure = builtin_structure("r50_like_init")
    structure.save(tmp_path / "best.json")
    torch.manual_seed(3)
    model = random_bn(timm.create_model("maedet", structure=structure), seed=3)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    result = export_onnx(
        "maedet",
        tmp_path / "best.onnx",
        structure=tmp_path / "best.json",
        checkpoint=tmp_path / "w.pth",
        input_size=SIZE,
    )
    _assert_fp32_parity(result.check)
    assert result.metadata["structure"] == structure.to_dict()
    reference = timm.create_model("maedet", structure=structure, features_only=True)
    reference.load_state_dict(
        {k.replace("stages.", "stages_", 1): v for k, v in model.state_dict().items() if not k.startswith("head")}
    )
    report = _parity(result.path, maedet.fuse_bn(reference.eval()), result.output_names, (1, 3, 64, 64))
    _assert_fp32_parity(report)


def test_simplify_keeps_parity(tmp_path, s_weights):
    pytest.importorskip("onnxslim", reason="onnxslim (extra 'simplify') is not installed")
    result = export_onnx(
        "maedet_s", tmp_path / "s.onnx", input_size=SIZE, simplify=True, dynamic=True, checkpoint=s_weights
    )
    _assert_fp32_parity(result.check)
    assert read_metadata(result.path)["model_name"] == "maedet_s"


def test_cli_export_and_info(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["maedet_m", "--onnx", str(out), "--input-size", "64", "96", "--batch-size", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["check"]["passed"] is True
    assert set(summary["check"]["outputs"]) == {"c2", "c3", "c4", "c5"}
    assert "max rel err" in captured.err and "cosine" in captured.err
    assert main(["--info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == [3, 64, 96]
    assert info["batch"] == 2
    assert main(["--info", str(out)]) == 0
    assert "maedet_m" in capsys.readouterr().out  # a result, like every tool's: on stdout
