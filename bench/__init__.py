"""Benchmark MAE-DET backbones against ResNet-50/101, side by side, on every backend the machine has.

from maedet.bench import run_bench
result = run_bench(backends="torch-eager,ort-cpu", input_sizes=[(640, 640)])   # or settings=BenchSettings(...)
result.latency_ratio("maedet_s", "resnet50", "ort-cpu")
report = measure_formats("runs/x/detector", data="val.json", images="val/", input_size=(640, 640))  # AP per format
"""

from .accuracy import measure_formats
from .accuracy_results import AccuracyReport
from .backends import BACKENDS, Backend, BackendStatus, detect_backends, resolve_backends, unavailable_reason
from .cache import ArtifactCache, default_cache_dir
from .errors import BackendUnavailable, BenchError
from .machine import machine_info, machine_line
from .models import DEFAULT_MODELS, REFERENCE_MODELS, ModelCost, ModelSpec, model_cost, parse_model
from .report import CSV_COLUMNS, render_table, write_csv, write_json, write_plot
from .results import BenchResult, BenchRow, Skipped, compute_speedups
from .suite import BenchSettings, run_bench
from .timing import LatencyStats, run_interleaved, summarize

__all__ = [
    "BACKENDS",
    "CSV_COLUMNS",
    "DEFAULT_MODELS",
    "REFERENCE_MODELS",
    "AccuracyReport",
    "ArtifactCache",
    "Backend",
    "BackendStatus",
    "BackendUnavailable",
    "BenchError",
    "BenchResult",
    "BenchRow",
    "BenchSettings",
    "LatencyStats",
    "ModelCost",
    "ModelSpec",
    "Skipped",
    "compute_speedups",
    "default_cache_dir",
    "detect_backends",
    "machine_info",
    "machine_line",
    "measure_formats",
    "model_cost",
    "parse_model",
    "render_table",
    "resolve_backends",
    "run_bench",
    "run_interleaved",
    "summarize",
    "unavailable_reason",
    "write_csv",
    "write_json",
    "write_plot",
]
