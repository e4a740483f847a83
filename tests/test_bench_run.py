"""maedet.bench end to end: a tiny real run (64×64, few rounds), its JSON/CSV/plot outputs and the CLI."""

from __future__ import annotations

import csv
import json
import logging
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

pytestmark = pytest.mark.slow  # see make test-fast

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
        (["--input-size", "16"], "too small"),
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
    argv += ["--min-rounds", "1", "--iterations", "1", "--warmup", "1", "--threads", "1", "--no-progress"]
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


@pytest.mark.gpu
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


# ----------------------------------------------------------------------------------------------- a verified cache
@pytest.fixture
def cache_copy(tiny: BenchResult, workdir, tmp_path):
    """A copy of the tiny run's cache (3 ONNX files and their records), free to damage."""
    import shutil

    return shutil.copytree(workdir / "cache", tmp_path / "cache")


class _Lines(logging.Handler):
    """The cache's log lines, as the user would read them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def cache_log():
    logger = logging.getLogger("maedet.bench.cache")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_another_models_onnx_under_a_cache_name_is_rebuilt(cache_copy, cache_log) -> None:
    from maedet.export import read_metadata

    cache = ArtifactCache(cache_copy)
    s_path = cache.onnx(parse_model("maedet_s"), "fp32", 1, *SIZE)
    r50_path = cache.onnx(parse_model("resnet50"), "fp32", 1, *SIZE)
    assert not cache_log  # both found and verified
    s_name = read_metadata(s_path)["model_name"]
    s_path.write_bytes(r50_path.read_bytes())  # issue #12: another model's file copied over MAE-DET-S's name
    assert cache.onnx(parse_model("maedet_s"), "fp32", 1, *SIZE) == s_path
    assert read_metadata(s_path)["model_name"] == s_name != read_metadata(r50_path)["model_name"]
    (message,) = cache_log
    assert s_path.name in message and "rebuilding" in message and "SHA-256 differs" in message
    assert repr(str(read_metadata(r50_path)["model_name"])) in message  # what the wrong file said it was


def test_a_garbage_cached_file_is_rebuilt_not_skipped(cache_copy, cache_log) -> None:
    cache = ArtifactCache(cache_copy)
    path = cache.onnx(parse_model("maedet_s"), "fp32", 1, *SIZE)
    path.write_bytes(b"\x00garbage" * 100)
    result = run_bench(
        models=["maedet_s"],
        backends="ort-cpu",
        input_sizes=[SIZE],
        warmup=1,
        rounds=1,
        iterations=1,
        cache_dir=cache_copy,
    )
    assert [r.model for r in result.results] == ["maedet_s"] and not result.skipped  # measured, not skipped
    assert any("not a readable ONNX file" in line for line in cache_log)
    cache_log.clear()
    assert cache.onnx(parse_model("maedet_s"), "fp32", 1, *SIZE) == path  # and the rebuilt file is trusted again
    assert not cache_log


def test_a_cached_file_without_its_record_is_rebuilt(cache_copy, cache_log) -> None:
    from maedet.bench.cache import record_path

    cache = ArtifactCache(cache_copy)
    path = cache.onnx(parse_model("resnet50"), "fp32", 1, *SIZE)
    record_path(path).unlink()
    cache.onnx(parse_model("resnet50"), "fp32", 1, *SIZE)
    assert "has no readable record" in cache_log[0]
    assert record_path(path).is_file()


# ----------------------------------------------------------------------------------------------- --quick and names
def test_cli_quick_run_guarantees_rounds_flags_noise_and_names_searches_by_folder(workdir, capsys, tmp_path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        builtin_structure("r50_like_init").save(tmp_path / folder / "best.json")
    out = tmp_path / "out"
    argv = ["--quick", "--models", "maedet_s", "resnet50", "--input-size", "64", "--max-time", "0.001"]
    argv += ["--structure", str(tmp_path / "a" / "best.json"), "--structure", str(tmp_path / "b" / "best.json")]
    argv += ["--threads", "1", "--no-progress", "--cache-dir", str(workdir / "cache")]
    argv += ["--json", str(out / "q.json"), "--csv", str(out / "q.csv"), "--plot", str(out / "q.png")]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    data = json.loads((out / "q.json").read_text())
    rows = data["results"]
    assert {(r["model"], r["backend"]) for r in rows} == {
        (m, "torch-eager") for m in ("maedet_s", "resnet50", "a", "b")
    }
    assert all(r["rounds"] >= 5 for r in rows)  # past a spent time budget, --quick still does 5 rounds
    assert data["config"]["min_rounds"] == 5 and "unreliable" in data["config"]["reliability"]
    for r in rows:  # the flag follows the documented rule
        rule_says = r["rounds"] >= 5 and all(u is None or u <= 15 for u in r["ratio_uncertainty_pct"].values())
        assert r["reliable"] == rule_says or not [u for u in r["ratio_uncertainty_pct"].values() if u is not None]
        assert (r["unreliable_reason"] is None) == r["reliable"]
    with (out / "q.csv").open() as f:
        assert [line["reliable"] for line in csv.DictReader(f)] == ["yes" if r["reliable"] else "no" for r in rows]
    assert (out / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert "done in" in stdout
