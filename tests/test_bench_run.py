"""maedet.bench end to end: a tiny real run (64×64, few rounds), its JSON/CSV/plot outputs and the CLI."""

from __future__ import annotations

import csv
import json
import os

import matplotlib.image as mpimg
import pytest
import torch
from rich.console import Console

import maedet
from maedet.bench import (
    CSV_COLUMNS,
    BenchError,
    BenchResult,
    render_table,
    run_bench,
    write_csv,
    write_json,
    write_plot,
)
from maedet.bench.backends import BACKENDS, unavailable_reason
from maedet.bench.cache import ArtifactCache
from maedet.bench.cli import main
from maedet.bench.models import parse_model
from maedet.zoo import builtin_structure, gmacs

SIZE = (64, 64)
ROW_KEYS = {"model", "backend", "precision", "batch", "input", "params", "gmacs", "latency_ms", "throughput", "speedup"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench")
    builtin_structure("r50_like_init").save(root / "r50init.json")
    return root


@pytest.fixture(scope="module")
def tiny(workdir) -> BenchResult:
    """One real run: a maedet model, ResNet-50 and a structure file, on PyTorch eager and ONNX Runtime CPU."""
    backends = "torch-eager,ort-cpu" + ("" if torch.cuda.is_available() else ",torch-cuda")
    return run_bench(
        models=["maedet_s", "resnet50", str(workdir / "r50init.json")],
        backends=backends,
        input_sizes=[SIZE],
        batch_sizes=[1],
        threads=1,
        warmup=1,
        rounds=2,
        min_rounds=2,
        iterations=2,
        max_time_s=None,
        cache_dir=workdir / "cache",
        paper=True,
    )


def test_tiny_run_measures_every_model_on_every_available_backend(tiny: BenchResult) -> None:
    got = {(r.model, r.backend) for r in tiny.results}
    assert got == {(m, b) for m in ("maedet_s", "resnet50", "r50init") for b in ("torch-eager", "ort-cpu")}
    for r in tiny.results:
        assert r.input == SIZE and r.batch == 1
        assert r.latency.samples == 2 * 2  # rounds × iterations
        assert 0 < r.latency.minimum <= r.latency.median <= r.latency.p90
        assert r.throughput == pytest.approx(1000.0 / r.latency.median)
        assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0
        assert r.memory_kind == "cpu-rss-rise"
    s = tiny.row("maedet_s", "ort-cpu")
    assert s.gmacs == gmacs(builtin_structure("maedet_s"), *SIZE)
    assert tiny.row("r50init", "torch-eager").gmacs == gmacs(builtin_structure("r50_like_init"), *SIZE)
    assert s.params == 21_233_120


def test_tiny_run_speedups_are_ratios_within_each_backend(tiny: BenchResult) -> None:
    for backend in ("torch-eager", "ort-cpu"):
        ref = tiny.row("resnet50", backend)
        assert ref.speedup["resnet50"] == 1.0
        for r in tiny.results:
            if r.backend == backend:
                assert r.speedup["resnet50"] == pytest.approx(ref.latency.median / r.latency.median)
                assert r.speedup["resnet101"] is None  # not measured in this run
        assert tiny.latency_ratio("maedet_s", "resnet50", backend) == pytest.approx(
            1 / tiny.row("maedet_s", backend).speedup["resnet50"]
        )


def test_unavailable_backends_are_listed_as_skipped_with_the_reason(tiny: BenchResult) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so torch-cuda is not skipped")
    skipped = {s.backend: s.reason for s in tiny.skipped}
    assert skipped == {"torch-cuda": unavailable_reason(BACKENDS["torch-cuda"])}
    assert all(r.backend != "torch-cuda" for r in tiny.results)


def test_onnx_exports_are_cached_and_reused(tiny: BenchResult, workdir) -> None:
    files = sorted((workdir / "cache").glob("*.onnx"))
    assert len(files) == 3
    cache = ArtifactCache(workdir / "cache")
    path = cache.onnx(parse_model("resnet50"), "fp32", 1, *SIZE)
    assert path in files
    before = path.stat().st_mtime_ns
    assert cache.onnx(parse_model("resnet50"), "fp32", 1, *SIZE) == path
    assert path.stat().st_mtime_ns == before  # found in the cache, not exported again


def test_json_has_the_documented_schema(tiny: BenchResult, tmp_path) -> None:
    path = write_json(tiny, tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert {"machine", "results", "skipped", "config"} <= set(data)
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    assert len(data["results"]) == len(tiny.results)
    for row in data["results"]:
        assert set(row) >= ROW_KEYS
        assert {"median", "p90"} <= set(row["latency_ms"])
        assert set(row["speedup"]) == {"resnet50", "resnet101"}
        assert row["input"] == list(SIZE)
        assert row.get("published") is None or "published" in row["published"]["source"]
    s = next(r for r in data["results"] if r["model"] == "maedet_s")
    assert s["published"]["coco_ap"] == 45.1  # --paper: docs/design.md §2 figure, labelled published
    assert "published" in data["published_source"]
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_csv_has_one_line_per_row(tiny: BenchResult, tmp_path) -> None:
    path = write_csv(tiny, tmp_path / "bench.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        lines = list(reader)
    assert len(lines) == len(tiny.results)
    first = tiny.results[0]
    assert lines[0]["model"] == first.model and lines[0]["input"] == "64x64"
    assert float(lines[0]["latency_median_ms"]) == pytest.approx(first.latency.median, abs=1e-3)
    assert lines[0]["speedup_resnet101"] == ""


def test_plot_is_a_png_image(tiny: BenchResult, tmp_path) -> None:
    path = write_plot(tiny, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = mpimg.imread(path).shape
    assert width > 1000 and height > 400


def test_table_shows_rows_machine_and_skips(tiny: BenchResult) -> None:
    console = Console(record=True, width=220)
    console.print(render_table(tiny))
    text = console.export_text()
    assert "MAE-DET-S" in text and "ResNet-50" in text and "r50init" in text
    assert tiny.machine["cpu"] in text
    assert "published" in text
    for s in tiny.skipped:
        assert f"skipped {s.backend}" in text


# ----------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input-size", "100"], "multiples of 32"),
        (["--backends", "onnx"], "unknown backend"),
        (["--models", "resnet5"], "unknown model"),
        (["--plot", "out.jpg"], "must end in .png"),
        (["--models", "maedet_s", "maedet_s"], "named twice"),
        (["--batch-size", "0"], "batch sizes must be positive"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_exit_2(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_cli_lists_backends(capsys) -> None:
    assert main(["--list-backends"]) == 0
    out = capsys.readouterr().out
    assert "torch-eager" in out and "trt-fp16" in out


def test_cli_tiny_run_writes_json_csv_and_plot(tiny: BenchResult, workdir, capsys, tmp_path) -> None:
    out = tmp_path / "runs"
    argv = ["--models", "maedet_s", "resnet50", "--backends", "ort-cpu", "--input-size", "64x64", "--rounds", "2"]
    argv += ["--min-rounds", "1", "--iters", "1", "--warmup", "1", "--threads", "1", "--no-progress"]
    argv += ["--cache-dir", str(workdir / "cache"), "--json", str(out / "b.json"), "--csv", str(out / "b.csv")]
    argv += ["--plot", str(out / "b.png")]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for name in ("b.json", "b.csv", "b.png"):
        assert (out / name).is_file()
        assert name in stdout
    data = json.loads((out / "b.json").read_text())
    assert {(r["model"], r["backend"]) for r in data["results"]} == {("maedet_s", "ort-cpu"), ("resnet50", "ort-cpu")}
    assert len(list((workdir / "cache").glob("*.onnx"))) == 3  # reused, nothing new exported


@pytest.mark.parametrize("name", ["torch-cuda-fp16", "torch-cuda-cl-fp16", "ort-cuda", "trt-fp16"])
def test_gpu_backend_tiny_run(name: str, workdir) -> None:
    reason = unavailable_reason(BACKENDS[name])
    if reason:
        pytest.skip(reason)
    result = run_bench(
        models=["maedet_s", "resnet50"],
        backends=name,
        input_sizes=[SIZE],
        warmup=1,
        rounds=2,
        iterations=3,
        max_time_s=None,
        cache_dir=workdir / "cache",
    )
    assert {r.model for r in result.results} == {"maedet_s", "resnet50"}, result.skipped
    assert all(r.device == "cuda" and r.latency.samples == 6 for r in result.results)


def test_api_rejects_bad_arguments(tmp_path) -> None:
    from maedet.bench import BenchError

    with pytest.raises(BenchError, match="warm-up"):
        run_bench(models=["resnet50"], backends="torch-eager", warmup=0, cache_dir=tmp_path)
    with pytest.raises(BenchError, match="two numbers"):
        run_bench(models=["resnet50"], backends="torch-eager", input_sizes=[(64,)], cache_dir=tmp_path)
    assert not os.listdir(tmp_path)


def test_cli_version_and_one_line_errors(capsys, tmp_path) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"maedet-bench {maedet.__version__}"
    assert main(["--models", "resnet5", "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "maedet-bench: error: unknown model 'resnet5': not a maedet model nor a registered timm model."
    ]
    assert main(["--rounds", "many"]) == 2  # an argparse usage error: one line too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("maedet-bench: error: ") and "--rounds" in err


def test_settings_dataclass_and_keywords_agree(tmp_path) -> None:
    from maedet.bench import BenchSettings

    settings = BenchSettings(input_sizes=[(64,)], cache_dir=tmp_path)
    with pytest.raises(BenchError, match="two numbers"):
        run_bench(models=["resnet50"], backends="torch-eager", settings=settings)
    with pytest.raises(BenchError, match="no setting warm_up"):
        run_bench(models=["resnet50"], backends="torch-eager", warm_up=1)
    assert BenchSettings(rounds=2, min_rounds=5).validated().min_rounds == 2
    assert not os.listdir(tmp_path)
