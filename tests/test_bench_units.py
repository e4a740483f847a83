"""maedet.bench: backend detection, the row math (stats, speedups, GMACs/params) and model parsing."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import torch

from maedet.bench import (
    BACKENDS,
    BenchError,
    LatencyStats,
    ModelSpec,
    compute_speedups,
    detect_backends,
    model_cost,
    parse_model,
    resolve_backends,
    run_interleaved,
    summarize,
)
from maedet.bench.backends import CPU_DEFAULT, GPU_BACKENDS, unavailable_reason
from maedet.bench.results import BenchRow
from maedet.bench.timing import choose_iterations, percentile
from maedet.zoo import builtin_structure, gmacs, param_count

# docs/design.md §2: exact params of the published structures; the timm/fvcore convention ResNet-50 @224 = 4.1 GMACs.
DESIGN_PARAMS = {"maedet_s": 21_233_120, "maedet_m": 25_843_536, "maedet_l": 43_879_552}


# ----------------------------------------------------------------------------------------------- backends
def test_every_backend_is_reported_with_a_reason_or_as_available() -> None:
    statuses = detect_backends()
    assert [s.backend.name for s in statuses] == list(BACKENDS)
    for s in statuses:
        assert s.available == (s.reason is None)
        if not s.available:
            assert len(s.reason) > 10 and "\n" not in s.reason


def test_cpu_backends_are_available_here() -> None:
    # torch and onnxruntime (with its quantization tools) are dependencies of the project.
    for name in ("torch-eager", "torch-eager-cl", "ort-cpu", "ort-cpu-int8"):
        assert unavailable_reason(BACKENDS[name]) is None, name


def test_cuda_backends_follow_what_torch_sees() -> None:
    for name in ("torch-cuda", "torch-cuda-fp16", "torch-cuda-cl-fp16"):
        reason = unavailable_reason(BACKENDS[name])
        assert (reason is None) == torch.cuda.is_available()
        if reason is not None:
            assert "CUDA" in reason


def test_ort_gpu_backends_follow_the_installed_providers() -> None:
    providers = ort.get_available_providers()
    for name in ("ort-cuda", "ort-cuda-fp16", "ort-trt", "ort-trt-fp16"):
        backend = BACKENDS[name]
        reason = unavailable_reason(backend)
        assert (reason is None) == (backend.provider in providers), (name, reason)
        if reason is not None:
            assert backend.provider in reason and "onnxruntime-gpu" in reason


def _expected_tensorrt_gap() -> str | None:
    """What this machine lacks for TensorRT engines, in the order the bench checks it (None: nothing)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    if importlib.util.find_spec("polygraphy") is None:
        return "Polygraphy"
    if not torch.cuda.is_available():
        return "CUDA"
    return None


def test_tensorrt_backends_say_what_is_missing() -> None:
    gap = _expected_tensorrt_gap()
    for name in ("trt", "trt-fp16", "trt-int8"):
        reason = unavailable_reason(BACKENDS[name])
        if gap is None:
            assert reason is None, (name, reason)
        else:
            assert reason is not None and gap in reason and "\n" not in reason, (name, reason)


def test_resolve_backends_defaults_aliases_and_errors() -> None:
    default = resolve_backends(None)
    assert default[: len(CPU_DEFAULT)] == list(CPU_DEFAULT)
    assert set(default[len(CPU_DEFAULT) :]) <= set(GPU_BACKENDS)
    assert resolve_backends("auto") == default
    assert resolve_backends("ort-cpu, torch-eager,ort-cpu") == ["ort-cpu", "torch-eager"]
    assert resolve_backends("gpu") == list(GPU_BACKENDS)
    assert resolve_backends("all") == list(BACKENDS)
    with pytest.raises(BenchError, match="unknown backend 'onnx'"):
        resolve_backends("torch-eager,onnx")
    with pytest.raises(BenchError, match="no backend"):
        resolve_backends(" , ")


# ----------------------------------------------------------------------------------------------- statistics
def test_percentile_matches_numpy() -> None:
    values = [3.0, 1.0, 7.0, 2.0, 9.0, 4.0, 10.0]
    for q in (0, 10, 25, 50, 75, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summarize_reports_milliseconds_median_p90_and_spread() -> None:
    seconds = [0.010, 0.011, 0.012, 0.013, 0.014, 0.015, 0.016, 0.017, 0.018, 0.100]
    stats = summarize(seconds)
    ms = np.array(seconds) * 1000
    assert stats.samples == 10
    assert stats.median == pytest.approx(float(np.median(ms)))
    assert stats.p90 == pytest.approx(float(np.percentile(ms, 90)))
    assert stats.minimum == pytest.approx(10.0)
    iqr = np.percentile(ms, 75) - np.percentile(ms, 25)
    assert stats.spread_pct == pytest.approx(100 * iqr / np.median(ms))
    assert set(stats.to_dict()) >= {"median", "p90", "samples", "spread_pct"}
    with pytest.raises(ValueError):
        summarize([])


def test_choose_iterations_scales_with_latency() -> None:
    assert choose_iterations(0.5) == 1  # slow CPU run: interleave finely
    assert choose_iterations(0.003) == 50  # fast GPU run: capped
    assert choose_iterations(0.05) == 5


def test_interleaved_rounds_rotate_order_and_respect_min_rounds() -> None:
    calls: list[str] = []
    runs = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = run_interleaved(runs, {"a": 2, "b": 1, "c": 1}, max_rounds=3)
    assert [len(times[k]) for k in "abc"] == [6, 3, 3]
    assert calls == ["a", "a", "b", "c", "b", "c", "a", "a", "c", "a", "a", "b"]
    # A deadline already past stops right after min_rounds.
    calls.clear()
    times = run_interleaved(runs, {}, max_rounds=10, min_rounds=2, deadline=0.0)
    assert [len(times[k]) for k in "abc"] == [2, 2, 2]


def _row(model: str, backend: str, median: float, size: tuple[int, int] = (640, 640)) -> BenchRow:
    stats = LatencyStats(median, median * 1.1, median * 0.9, median * 0.9, median, 5.0, 10)
    return BenchRow(model, backend, "fp32", "cpu", 2, size, 1, 1.0, stats, 1, 10, None, "cpu-rss-rise")


def test_speedups_are_reference_over_model_latency_on_the_same_backend() -> None:
    rows = [
        _row("maedet_s", "ort-cpu", 50.0),
        _row("resnet50", "ort-cpu", 100.0),
        _row("resnet101", "ort-cpu", 180.0),
        _row("maedet_s", "torch-eager", 80.0),
        _row("resnet50", "torch-eager", 120.0),  # no resnet101 on this backend
        _row("resnet50", "ort-cpu", 10.0, size=(320, 320)),  # other input: never compared with 640 rows
    ]
    compute_speedups(rows)
    assert rows[0].speedup == {"resnet50": pytest.approx(2.0), "resnet101": pytest.approx(3.6)}
    assert rows[1].speedup["resnet50"] == 1.0
    assert rows[2].speedup["resnet101"] == 1.0
    assert rows[3].speedup == {"resnet50": pytest.approx(1.5), "resnet101": None}
    assert rows[5].speedup == {"resnet50": 1.0, "resnet101": None}
    assert rows[0].throughput == pytest.approx(2 * 1000 / 50.0)  # batch 2


# ----------------------------------------------------------------------------------------------- models and cost
def test_resnet50_gmacs_and_params_match_the_known_figures() -> None:
    cost = model_cost(parse_model("resnet50"), 224, 224)
    assert round(cost.gmacs, 1) == 4.1  # docs/design.md §2: ResNet-50 @224 = 4.1 GMACs
    assert round(cost.params / 1e6, 1) == 23.5  # docs/design.md §2: 23.5M (backbone without classifier)
    # Multiples of 32 scale every conv's output pixels exactly, so GMACs scale with the pixel count.
    at_640 = model_cost(parse_model("resnet50"), 640, 640)
    assert at_640.gmacs == pytest.approx(cost.gmacs * (640 / 224) ** 2, rel=1e-12)
    assert at_640.params == cost.params


@pytest.mark.parametrize("name", ["maedet_s", "maedet_m", "maedet_l"])
def test_maedet_cost_matches_the_zoo_and_the_flop_counter(name: str) -> None:
    structure = builtin_structure(name)
    cost = model_cost(parse_model(name), 640, 480)
    assert cost.gmacs == gmacs(structure, 640, 480)
    assert cost.params == param_count(structure) == DESIGN_PARAMS[name]
    # The generic path (torch FlopCounterMode on the meta-device features model) agrees with the closed form.
    counted = model_cost(ModelSpec(label=name, name=name), 640, 480)
    assert counted.gmacs == pytest.approx(cost.gmacs, rel=1e-12)
    assert counted.params == cost.params


def test_parse_model_names_and_structure_files(tmp_path) -> None:
    spec = parse_model("maedet_m")
    assert (spec.label, spec.name, spec.is_maedet) == ("maedet_m", "maedet_m", True)
    assert parse_model("resnet101").is_reference
    path = tmp_path / "searched.json"
    builtin_structure("r50_like_init").save(path)
    spec = parse_model(str(path))
    assert (spec.label, spec.name) == ("searched", "maedet")
    assert spec.structure == builtin_structure("r50_like_init")
    assert spec.cache_key() != parse_model("maedet_s").cache_key()
    with pytest.raises(BenchError, match="unknown model 'resnet5'"):
        parse_model("resnet5")
    with pytest.raises(BenchError, match="does not exist"):
        parse_model(str(tmp_path / "missing.json"))
    with pytest.raises(BenchError, match="needs a structure"):
        parse_model("maedet")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "maedet-structure/1", "blocks": [{"class": "Nope"}]}')
    with pytest.raises(BenchError, match="cannot read structure file"):
        parse_model(str(bad))


def test_a_model_without_c2_to_c5_is_refused() -> None:
    with pytest.raises(BenchError, match="no feature map at stride 4"):
        model_cost(parse_model("vit_tiny_patch16_224"), 224, 224)


# ----------------------------------------------------------------------------------------------- reliability
def _noisy_row(model: str, spread_pct: float, rounds: int, median: float = 100.0) -> BenchRow:
    stats = LatencyStats(median, median * 1.2, median * 0.8, median * 0.8, median, spread_pct, rounds)
    return BenchRow(model, "torch-eager", "fp32", "cpu", 1, (64, 64), 1, 1.0, stats, 1, rounds, None, "cpu-rss-rise")


def _assessed(rows: list[BenchRow]) -> list[BenchRow]:
    from maedet.bench.reliability import assess_reliability

    compute_speedups(rows)
    assess_reliability(rows)
    return rows


def test_rows_with_too_few_rounds_or_too_much_spread_are_unreliable() -> None:
    from maedet.bench.reliability import MAX_UNCERTAINTY_PCT, MIN_ROUNDS, median_uncertainty_pct

    # 12 quiet rounds: ±1.57·5/√12 = ±2.3% per median, ±3.2% on the ratio.
    quiet = _assessed([_noisy_row("maedet_s", 5.0, 12, 60.0), _noisy_row("resnet50", 5.0, 12)])
    assert all(r.reliable and r.unreliable_reason is None for r in quiet)
    assert quiet[0].ratio_uncertainty_pct["resnet50"] == pytest.approx(2**0.5 * 1.57 * 5.0 / 12**0.5)
    assert quiet[0].ratio_uncertainty_pct["resnet101"] is None  # not measured
    # What issue #11 saw with --quick: 2 rounds at 90% spread.
    shaky = _assessed([_noisy_row("maedet_s", 90.0, 2, 60.0), _noisy_row("resnet50", 10.0, 2)])
    assert not any(r.reliable for r in shaky)
    assert f"only 2 timed rounds (at least {MIN_ROUNDS} needed)" in shaky[1].unreliable_reasons
    assert any(reason.startswith("ratio vs ResNet-50 uncertain by ±") for reason in shaky[0].unreliable_reasons)
    # Enough rounds, but one side too noisy: both rows' ratios rest on it.
    noisy = _assessed([_noisy_row("maedet_s", 30.0, 6, 60.0), _noisy_row("resnet50", 5.0, 6)])
    assert median_uncertainty_pct(noisy[0].latency, 6) > MAX_UNCERTAINTY_PCT
    assert not noisy[0].reliable and noisy[1].reliable  # the reference against itself is exactly 1
    alone = _assessed([_noisy_row("maedet_s", 40.0, 6)])  # no reference: its own median counts
    assert alone[0].unreliable_reasons == ["median uncertain by ±26% (over ±15%)"]


def test_unreliable_rows_are_flagged_in_table_json_csv_and_plot() -> None:
    import matplotlib.pyplot as plt
    from rich.console import Console

    from maedet.bench import BenchResult, render_table
    from maedet.bench.reliability import RULE
    from maedet.bench.report import UNRELIABLE_HATCH, csv_rows, plot_figure

    rows = _assessed(
        [_noisy_row("maedet_s", 90.0, 2, 60.0), _noisy_row("maedet_m", 2.0, 12, 80.0), _noisy_row("resnet50", 2.0, 12)]
    )
    result = BenchResult({"cpu": "test cpu", "cores": 2}, {}, rows, [])
    data = result.to_dict()["results"]
    assert [(r["model"], r["reliable"]) for r in data] == [("maedet_s", False), ("maedet_m", True), ("resnet50", True)]
    assert "only 2 timed rounds" in data[0]["unreliable_reason"] and data[1]["unreliable_reason"] is None
    assert [line["reliable"] for line in csv_rows(result)] == ["no", "yes", "yes"]
    assert "only 2 timed rounds" in csv_rows(result)[0]["unreliable_reason"]
    console = Console(record=True, width=240)
    console.print(render_table(result))
    text = console.export_text()
    assert "MAE-DET-S *" in text and "MAE-DET-M *" not in text
    assert " ".join(RULE.split()) in " ".join(text.split())
    fig = plot_figure(result)
    try:
        bars = [p for p in fig.axes[1].patches if p.get_height() > 0]
        assert [b.get_hatch() for b in bars] == [UNRELIABLE_HATCH, None, None]  # S, M, ResNet-50
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------- issue 17
def test_cost_of_a_resnet_at_the_smallest_documented_input() -> None:
    # 32×32 leaves C5 at 1×1: BatchNorm in train mode refuses a one-value channel; costs are counted as deployed
    cost = model_cost(parse_model("resnet18"), 32, 32)
    assert cost.params > 10_000_000 and cost.gmacs > 0


def test_the_time_budget_bounds_rounds_of_huge_iteration_counts() -> None:
    import time

    calls = {"a": 0, "b": 0}

    def runner(key: str):
        def run() -> None:
            calls[key] += 1
            time.sleep(0.002)

        return run

    started = time.monotonic()
    times = run_interleaved(
        {k: runner(k) for k in calls}, dict.fromkeys(calls, 10**9), max_rounds=3, min_rounds=3, deadline=started + 0.6
    )
    assert time.monotonic() - started < 3.0  # without the budget inside the loop: 10**9 runs each
    assert all(len(times[k]) >= 3 for k in calls)  # every runner still runs in every round it is owed


def test_a_fifo_at_a_cache_record_path_is_not_opened(tmp_path) -> None:
    import os
    import threading

    from maedet.bench.cache import ArtifactCache, record_path

    cache = ArtifactCache(tmp_path)
    path = cache.onnx_path(parse_model("resnet18"), "fp32", 1, 64, 64)
    path.write_bytes(b"an old export")
    os.mkfifo(record_path(path))
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(cache._reusable(path, {"model": "resnet18"})), daemon=True)
    worker.start()
    worker.join(30)
    assert outcome == [False]  # read nothing from the FIFO, judged the file unusable (and removed it to rebuild)
    assert not path.exists() and not os.path.lexists(record_path(path))


# ------------------------------------------------------------------------------------------- issue 17: bounds
def test_unreasonable_thread_counts_and_sizes_are_one_sentence() -> None:
    from maedet.bench.errors import BenchError
    from maedet.bench.machine import usable_cores
    from maedet.bench.suite import BenchSettings
    from maedet.errors import MaeDetError
    from maedet.sizes import parse_input_size_flag

    limit = 4 * usable_cores()
    assert BenchSettings(threads=limit).validated().threads == limit
    with pytest.raises(BenchError, match=rf"threads must be between 1 and {limit} .*got 100,000"):
        BenchSettings(threads=100_000).validated()
    with pytest.raises(MaeDetError, match="a 5000-character value is far beyond"):
        parse_input_size_flag(["9" * 5000])  # int() itself refuses past 4300 digits with a ValueError
    with pytest.raises(MaeDetError, match="far beyond"):
        parse_input_size_flag(["640x" + "9" * 5000])


def test_bench_memory_estimate_counts_the_weights() -> None:
    """Issue 17: only activations were estimated; a model's weights are held by PyTorch, the file and a runtime."""
    from maedet.bench.errors import BenchError
    from maedet.bench.memory_check import check_bench_memory
    from maedet.bench.models import parse_model

    spec = parse_model("resnet50")  # 25.6 M parameters: 102 MB of float32 weights, 2 MB of activations at 32 px
    check_bench_memory([spec], [((32, 32), 1)], available=2**30)
    with pytest.raises(BenchError, match=r"measuring resnet50 at 1×3×32×32 needs about 0\.3 GiB"):
        check_bench_memory([spec], [((32, 32), 1)], available=200 * 2**20)


def test_ap_plot_labels_of_formats_that_measure_alike_step_apart():
    from maedet.bench.accuracy_report import label_offsets

    # ort-fp32 and ov-fp32: the same AP, 0.2 ms apart on a 20 ms axis; pytorch-fp32 far away; an INT8 point lower
    points = [(31.6, 52.5), (12.8, 52.5), (13.0, 52.5), (9.1, 52.3)]
    offsets = label_offsets(points)
    assert offsets[0] == offsets[1] == offsets[3] == (6, 4)  # alone where they are: the usual place
    assert offsets[2][1] <= offsets[1][1] - 10  # the second of the close pair one line lower
    assert label_offsets([]) == [] and label_offsets([(1.0, 1.0), (1.0, 1.0)])[1] == (6, -7)
