"""TensorRT: the pure parts (profiles, options, build plan per TensorRT generation, sidecar, mismatch message)
for real; the engine build itself only where TensorRT and a GPU exist."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from maedet.engine_sidecar import engine_mismatch_message, read_sidecar, sidecar_path, write_sidecar
from maedet.export import ExportError, MissingDependencyError
from maedet.export.cli import main
from maedet.export.tensorrt import BuildPlan, ProfileShapes, plan_build, profile_shapes, validate_workspace
from maedet.runtime import require_tensorrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not (HAS_TRT and HAS_GPU), reason="needs TensorRT and an NVIDIA GPU (maedet[gpu])")

# The enum members each generation exposes (names only): TensorRT 10 has precision flags, 11 has none.
TRT10_BUILDER = {"FP16", "INT8", "BF16", "TF32", "STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS", "REFIT"}
TRT10_NETWORK = {"EXPLICIT_BATCH", "STRONGLY_TYPED"}
TRT11_BUILDER = {"TF32", "REFIT", "STRIP_PLAN", "DEBUG"}
TRT11_NETWORK = {"STRONGLY_TYPED"}


def test_static_profile_is_one_shape():
    p = profile_shapes(batch=2, input_size=(640, 480), dynamic=False)
    assert p == ProfileShapes((2, 3, 640, 480), (2, 3, 640, 480), (2, 3, 640, 480))


def test_dynamic_profile_defaults():
    p = profile_shapes(batch=2, input_size=(640, 480), dynamic=True)
    assert p.min == (1, 3, 320, 224)  # half, rounded down to the stride 32
    assert p.opt == (2, 3, 640, 480)
    assert p.max == (8, 3, 1280, 960)
    assert p.to_dict() == {"min": [1, 3, 320, 224], "opt": [2, 3, 640, 480], "max": [8, 3, 1280, 960]}


def test_dynamic_profile_from_flags():
    p = profile_shapes(
        batch=4,
        input_size=(512, 512),
        dynamic=True,
        min_batch=2,
        max_batch=16,
        min_size=(256, 320),
        max_size=(1024, 768),
    )
    assert (p.min, p.opt, p.max) == ((2, 3, 256, 320), (4, 3, 512, 512), (16, 3, 1024, 768))


def test_dynamic_profiles_take_sizes_that_are_not_multiples_of_the_stride():
    p = profile_shapes(batch=1, input_size=(333, 517), dynamic=True, min_size=(225, 300), max_size=(650, 1000))
    assert (p.min, p.opt, p.max) == ((1, 3, 225, 300), (1, 3, 333, 517), (8, 3, 650, 1000))


def test_tiny_opt_keeps_min_at_one_stride():
    assert profile_shapes(batch=1, input_size=(32, 64), dynamic=True).min == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dynamic=False, max_batch=4), "need --dynamic"),
        (dict(dynamic=True, min_batch=0), "minimum batch must be at least 1"),
        (dict(dynamic=True, max_batch=1, batch=2), "batch must satisfy min ≤ opt ≤ max"),
        (dict(dynamic=True, max_size=(320, 640)), "height must satisfy"),
        (dict(dynamic=True, min_size=(16, 128)), "at least 32×32"),
        (dict(dynamic=True, min_size=(128, 0)), "at least 32×32"),
    ],
)
def test_profile_rejects_bad_flags(kwargs, message):
    args = dict(batch=1, input_size=(640, 640)) | kwargs
    with pytest.raises(ExportError, match=message):
        profile_shapes(**args)


def test_workspace():
    assert validate_workspace(4) == 4 << 30
    assert validate_workspace(0.5) == 1 << 29
    for bad in (0, -1, float("nan"), 4096):
        with pytest.raises(ExportError, match="--workspace"):
            validate_workspace(bad)


@pytest.mark.parametrize(("precision", "flags"), [("fp32", ()), ("fp16", ("FP16",)), ("int8", ("INT8", "FP16"))])
def test_plan_tensorrt_10_uses_precision_flags(precision, flags):
    assert plan_build(TRT10_BUILDER, TRT10_NETWORK, precision) == BuildPlan(False, flags, ())


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plan_tensorrt_11_is_strongly_typed(precision):
    assert plan_build(TRT11_BUILDER, TRT11_NETWORK, precision) == BuildPlan(True, (), ("STRONGLY_TYPED",))


def test_plan_rejects_unknown_api_and_precision():
    with pytest.raises(ExportError, match="neither precision builder flags nor strongly typed"):
        plan_build({"TF32"}, {"EXPLICIT_BATCH"}, "fp16")
    with pytest.raises(ExportError, match="fp32, fp16 or int8"):
        plan_build(TRT10_BUILDER, TRT10_NETWORK, "int4")


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "m.engine"
    info = {
        "tensorrt_version": "10.9.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "precision": "int8",
        "profiles": [profile_shapes(batch=1, input_size=(640, 640), dynamic=True).to_dict()],
        "onnx_metadata": {"model_name": "maedet_m", "output_strides": [4, 8, 16, 32]},
    }
    path = write_sidecar(engine, info)
    assert path == sidecar_path(engine) == tmp_path / "m.engine.json"
    assert read_sidecar(engine) == {"format": "maedet-engine/1", **info}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine.json"]  # no temp file left


def test_sidecar_errors(tmp_path):
    with pytest.raises(ExportError, match=r"sidecar .* is missing"):
        read_sidecar(tmp_path / "x.engine")
    (tmp_path / "y.engine.json").write_text("{broken")
    with pytest.raises(ExportError, match="cannot be read"):
        read_sidecar(tmp_path / "y.engine")
    (tmp_path / "z.engine.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ExportError, match="not a maedet engine sidecar"):
        read_sidecar(tmp_path / "z.engine")


def test_mismatch_message():
    built = {"tensorrt_version": "10.9.0", "gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
    assert engine_mismatch_message(built, "10.9.0", "NVIDIA A100-SXM4-80GB", "8.0") is None
    msg = engine_mismatch_message(built, "11.0.0", "NVIDIA A100-SXM4-80GB", "8.0")
    assert msg == (
        "this engine was built with TensorRT 10.9.0 (this machine has 11.0.0); engines only run where they were "
        "built, so rebuild it here with maedet-export --trt."
    )
    msg = engine_mismatch_message(built, "10.9.0", "NVIDIA H100 80GB HBM3", "9.0")
    assert "compute capability 8.0 (this GPU is 9.0)" in msg and msg.count(".") >= 1 and "\n" not in msg
    msg = engine_mismatch_message(built, "10.9.0", "NVIDIA A100-PCIE-40GB", "8.0")
    assert "a NVIDIA A100-SXM4-80GB (this GPU is a NVIDIA A100-PCIE-40GB)" in msg
    both = engine_mismatch_message(built, "11.1.0", "NVIDIA L4", "8.9")
    assert "TensorRT 10.9.0" in both and "compute capability 8.0" in both


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_require_tensorrt_names_the_install():
    with pytest.raises(MissingDependencyError, match=r"pip install 'maedet\[gpu\]'"):
        require_tensorrt()


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="TensorRT and a GPU are present: the engine gets built")
def test_cli_trt_without_tensorrt_exits_2_before_writing_anything(tmp_path, capsys):
    code = main(["maedet_s", "--trt", str(tmp_path / "s.engine"), "--input-size", "64", "64", "--no-check"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'maedet[gpu]'" in err and "nothing was written" in err
    assert "TensorRT" in err or "Polygraphy" in err or "no NVIDIA GPU" in err or "none is visible" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_TRT and HAS_GPU, reason="TensorRT and a GPU are present: the engine gets built")
@pytest.mark.parametrize("model", ["maedet_s", "maedet_s_gfl"])
def test_missing_tensorrt_is_reported_before_path_clashes(tmp_path, capsys, model):
    """Issue 17: a machine without TensorRT cannot build any engine, so that is the sentence, whatever the paths."""
    (tmp_path / "s.onnx").write_bytes(b"mine")
    argv = [model, "--trt", str(tmp_path / "s.engine"), "--input-size", "64", "--no-check"]  # would replace s.onnx
    for clash in ([], ["--onnx", str(tmp_path / "s.engine")]):
        assert main([*argv, *clash]) == 2
        err = capsys.readouterr().err
        assert "--trt needs" in err and "nothing was written" in err and "same file" not in err, err
    assert (tmp_path / "s.onnx").read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


@needs_trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision_flag", [[], ["--half"], ["--int8"]])
def test_build_and_check_engine(tmp_path, capsys, precision_flag):
    engine = tmp_path / "m.engine"
    argv = ["maedet_m", "--trt", str(engine), "--input-size", "128", "128", "--dynamic", "--json", *precision_flag]
    assert main([*argv, "--timing-cache", str(tmp_path / "cache.bin")]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"]["check"]["passed"]
    assert read_sidecar(engine)["profiles"][0]["opt"] == [1, 3, 128, 128]
    assert (tmp_path / "cache.bin").stat().st_size > 0
