"""maedet-bench --detector: whole detectors are measured, costed and compared with the same kind of ResNet detector."""

from __future__ import annotations

import pytest
import torch

import maedet
from maedet.bench.detectors import bench_detector
from maedet.bench.errors import BenchError
from maedet.bench.models import display_name, is_reference, model_cost, parse_model
from maedet.bench.results import BenchRow, compute_speedups
from maedet.bench.suite import run_bench
from maedet.bench.timing import LatencyStats
from maedet.zoo.gfl_postprocess import PostprocessConfig

pytestmark = pytest.mark.slow  # see make test-fast


def _row(model: str, median: float) -> BenchRow:
    stats = LatencyStats(median, median * 1.1, median * 0.9, median * 0.9, median, 5.0, 10)
    return BenchRow(model, "ort-cpu", "fp32", "cpu", 1, (640, 640), 1, 1.0, stats, 1, 10, None, "cpu-rss-rise")


def test_detector_rows_are_compared_with_the_same_kind_of_resnet_detector() -> None:
    rows = [
        _row("maedet_s_gfl", 50.0),
        _row("maedet_s_gfl+nms", 70.0),
        _row("resnet50_gfl", 100.0),
        _row("resnet50_gfl+nms", 140.0),
        _row("resnet101_gfl", 200.0),
        _row("resnet50", 30.0),  # a backbone row never serves as a detector's reference
    ]
    compute_speedups(rows)
    assert rows[0].speedup == {"resnet50": pytest.approx(2.0), "resnet101": pytest.approx(4.0)}
    assert rows[1].speedup == {"resnet50": pytest.approx(2.0), "resnet101": None}
    assert rows[5].speedup["resnet50"] == 1.0
    assert [is_reference(r.model) for r in rows] == [False, False, True, True, True, True]
    assert display_name("maedet_m_gfl+nms") == "MAE-DET-M GFL + NMS"


def test_parse_detector_names() -> None:
    spec = parse_model("maedet_l_gfl+nms")
    assert (spec.name, spec.detector, spec.nms) == ("maedet_l_gfl", True, True)
    assert parse_model("resnet101_gfl").detector and not parse_model("resnet101_gfl").nms
    with pytest.raises(BenchError, match=r"'\+nms' applies to detectors"):
        parse_model("resnet50+nms")


def test_detector_cost_counts_backbone_neck_and_head() -> None:
    cost = model_cost(parse_model("maedet_s_gfl"), 640, 640)
    assert cost.params == sum(p.numel() for p in maedet.create_detector("maedet_s_gfl").parameters())
    backbone = model_cost(parse_model("maedet_s"), 640, 640)
    assert cost.gmacs > backbone.gmacs * 1.5  # FPN + head at five levels add more than half again


def test_bench_detectors_give_the_stated_nms_workload() -> None:
    """Every point kept by the per-level top-k becomes a class-0 candidate (see maedet.bench.detectors)."""
    detector = bench_detector("maedet_s_gfl")
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = detector(x)[:5]
    points = sum(s.shape[2] * s.shape[3] for s in scores)
    assert all(bool((s[:, 0] > 0.05).all()) for s in scores)
    assert sum(int((s[:, 1:] > 0.05).sum()) for s in scores) < points // 10
    assert len(detector.predict(x, cfg=PostprocessConfig(max_per_img=1000))[0]) > 0


def test_run_bench_measures_detectors_with_and_without_nms(tmp_path) -> None:
    result = run_bench(
        ["maedet_s_gfl", "maedet_s_gfl+nms", "resnet50_gfl", "resnet50_gfl+nms"],
        "torch-eager",
        input_sizes=[(64, 96)],
        warmup=1,
        rounds=1,
        min_rounds=1,
        iterations=1,
        cache_dir=tmp_path,
    )
    assert [r.model for r in result.results] == ["maedet_s_gfl", "maedet_s_gfl+nms", "resnet50_gfl", "resnet50_gfl+nms"]
    assert all(r.latency.median > 0 and r.speedup["resnet50"] is not None for r in result.results)
    assert result.row("resnet50_gfl+nms", "torch-eager").speedup["resnet50"] == 1.0


def test_a_searched_structure_is_benched_as_a_whole_detector_beside_resnet50s(tmp_path) -> None:
    """``--detector --structure FILE``: the searched backbone's detector (what --detector-budget prices), with and
    without NMS, compared with ResNet-50's detector of the same kind in the same run."""
    from maedet.bench.cli import main
    from maedet.zoo import builtin_structure

    structure = tmp_path / "found.json"
    structure.write_text(builtin_structure("maedet_s").to_json())
    out = tmp_path / "bench.csv"
    argv = ["--detector", "--models", "resnet50_gfl", "resnet50_gfl+nms", "--structure", str(structure)]
    argv += ["--backends", "ort-cpu", "--input-size", "64", "--threads", "1", "--warmup", "1", "--rounds", "2"]
    argv += ["--min-rounds", "1", "--iterations", "1", "--cache-dir", str(tmp_path / "cache"), "--csv", str(out)]
    argv += ["--no-progress"]
    assert main(argv) == 0
    import csv

    rows = {r["model"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"resnet50_gfl", "resnet50_gfl+nms", "found_gfl", "found_gfl+nms"}
    whole = maedet.create_detector("gfl", structure=builtin_structure("maedet_s"))
    assert int(rows["found_gfl"]["params"]) == sum(p.numel() for p in whole.parameters())
    assert whole.neck.lateral_convs[0].out_channels == 256  # ResNet-50's FPN width, as the detector budget prices
    for name in ("found_gfl", "found_gfl+nms"):
        assert float(rows[name]["speedup_resnet50"]) > 0  # compared with resnet50_gfl / resnet50_gfl+nms
