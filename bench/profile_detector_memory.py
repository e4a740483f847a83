"""``maedet-bench profile --memory T.json --detector``: a memory model of whole detectors, fitted and validated.

Whole GFocalV2 detectors are exported as the bench runs them (bench/detectors.py's deploy form with its fixed NMS
workload, NMS in the graph; the same export as the latency profile's ``--detector``) and measured like the
backbones (:mod:`.memory_measure`: peak RSS rise of a fresh session's creation and of its first two runs, three
fresh processes each). The fit detectors are MAE-DET-S/M/L's and random backbones of the space with FPN widths
256/192/128, so the head's share of the weights and activations varies; the held-out ones are random backbones
with the 256-wide FPN and 4-conv towers that ``maedet-search run --detector-budget`` builds. The two phases of
:mod:`maedet.zoo.latency.memory` are fitted on the detectors' features (:mod:`maedet.zoo.latency.detector_memory`)
and written under the table's ``memory`` section as ``detector``, with every detector's figures. Each
measurement is kept in ``OUT.detector-memory-partial`` as it comes, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from maedet.errors import MaeDetError
from maedet.zoo import Structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.detector import DetectorHead
from maedet.zoo.latency.detector_memory import DetectorMemoryModel, detector_memory_features
from maedet.zoo.latency.memory import PHASE_FEATURES, fit_phases, table_memory_model

from .memory_measure import REPEATS, measure_model_file
from .profile import sample_structures
from .profile_detector import TRAIN_FPN, DetectorUnit, bench_module, named_units
from .profile_memory import measure_resumably, measure_settings, memory_rows, open_table_to_fit, validated_section
from .profile_progress import profile_progress

__all__ = ["detector_memory_units", "fit_table_detector_memory", "measure_detector_memory"]

FIT_SEED, VALIDATION_SEED = 223, 317  # apart from the backbones' memory streams and the latency profile's
PUBLISHED = ("maedet_s_gfl", "maedet_m_gfl", "maedet_l_gfl")
OPSET = 17  # as the backbones' memory measurements export (memory_measure.export_network)
SEARCH_HEAD = DetectorHead()  # what --detector-budget builds over a searched backbone (bench_detector's 'gfl')


def detector_memory_units(
    input_size: int, fit: int, validate: int, seed: int
) -> tuple[dict[str, DetectorUnit], dict[str, DetectorUnit]]:
    """The fit detectors (the published three first, then random backbones with FPN widths 256/192/128) and
    distinct held-out ones (random backbones, the search's head)."""
    named = named_units(input_size)
    fitted = {n: named[n] for n in PUBLISHED[:fit]}
    for i, s in enumerate(sample_structures(max(0, fit - len(fitted)), seed + FIT_SEED, input_size)):
        fitted[f"dfit{i}"] = DetectorUnit(s, TRAIN_FPN[i % len(TRAIN_FPN)], input_size)
    seen = {u.structure.to_json() for u in fitted.values() if u.structure is not None}
    pool = [s for s in sample_structures(validate + 20, seed + VALIDATION_SEED, input_size) if s.to_json() not in seen]
    if len(pool) < validate:
        raise MaeDetError(f"could not draw {validate} distinct validation detectors; ask for fewer.")
    held_out = {
        f"dmem{i}": DetectorUnit(s, SEARCH_HEAD.fpn_channels, input_size) for i, s in enumerate(pool[:validate])
    }
    return fitted, held_out


def measure_detector_memory(
    unit: DetectorUnit,
    batch: int,
    threads: int,
    workdir: Path,
    mmap_threshold: int | None = None,
    repeats: int = REPEATS,
) -> dict[str, float]:
    """MiB (memory_measure.PHASES) of the unit's whole detector, exported as the bench exports it."""
    from maedet.export import ExportOptions, export_onnx

    from .cache import _quiet_logging as quiet_logging

    path = workdir / "memory-detector.onnx"
    options = ExportOptions(input_size=(unit.size, unit.size), batch=batch, outputs="features", precision="fp32",
                            check=False, opset=OPSET, nms=True)  # fmt: skip
    with quiet_logging():
        export_onnx(bench_module(unit), path, options)
    try:
        return measure_model_file(path, unit.size, batch, threads, repeats, mmap_threshold)
    finally:
        path.unlink(missing_ok=True)


def _identity(unit: DetectorUnit) -> str:
    backbone = unit.backbone if isinstance(unit.backbone, str) else unit.backbone.to_json()
    return f"detector {unit.fpn_channels} {unit.size} {backbone}"


def _structure(unit: DetectorUnit) -> Structure:
    assert unit.structure is not None  # the units drawn here are MAE-DET detectors or members of the space
    return unit.structure


def fit_table_detector_memory(
    table_path: str | Path,
    fit: int,
    validate: int,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    mmap_threshold: int | None = None,
    repeats: int = REPEATS,
) -> LatencyTable:
    """Measure, fit and validate whole detectors and write the table (``out``, default the table itself) with the
    ``detector`` part of its memory section (each detector the median of ``repeats`` fresh processes). The table
    needs its backbones' memory model first (the detector's sits beside it, and the search reads both)."""
    table = open_table_to_fit(table_path, fit, mmap_threshold, "detectors")
    table_memory_model(table, f"latency table {str(table_path)!r}")
    target = table.target
    out_path = Path(out or table_path)
    partial = out_path.with_name(out_path.name + ".detector-memory-partial")
    fitted, held_out = detector_memory_units(table.input_size, fit, validate, seed)
    units = {**fitted, **held_out}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maedet-memory-") as tmp:

        def measure(unit: DetectorUnit) -> Callable[[], dict[str, float]]:
            return lambda: measure_detector_memory(unit, table.batch, target.get("threads") or 1, Path(tmp),
                                                   mmap_threshold, repeats)  # fmt: skip

        items = {name: (_identity(u), measure(u)) for name, u in units.items()}
        settings = measure_settings(target, mmap_threshold) | {"what": "detector"}
        settings |= {} if repeats == REPEATS else {"repeats": repeats}
        with profile_progress(progress, len(units)) as step:
            measured = measure_resumably(items, settings, partial, step)
    block = int(table.model.get("channel_block", 1))
    rows = [
        detector_memory_features(_structure(u), u.head, table.input_size, table.batch, block) for u in fitted.values()
    ]
    phases = fit_phases(rows, {p: [measured[n][p] for n in fitted] for p in PHASE_FEATURES})
    model = DetectorMemoryModel(phases, table.batch, table.input_size, block, malloc_mmap_threshold=mmap_threshold,
                                head=SEARCH_HEAD)  # fmt: skip
    models = {name: dataclasses.replace(model, head=u.head) for name, u in units.items()}  # each row's own head
    wall_s = time.perf_counter() - start

    def entries(group: Mapping[str, DetectorUnit]) -> dict[str, tuple[DetectorMemoryModel, Structure]]:
        return {n: (models[n], _structure(u)) for n, u in group.items()}

    extra = {n: {"fpn_channels": u.fpn_channels} for n, u in units.items()}
    fit_rows = memory_rows(entries(fitted), measured, "fit", extra)
    val_rows = memory_rows(entries(held_out), measured, "validation", extra)
    table.memory = dict(table.memory) | {"detector": validated_section(model, fit_rows, val_rows, wall_s, "detectors")}
    table.save(out_path)
    partial.unlink(missing_ok=True)
    return table
