"""AP per format, beside latency: what each export of one detector costs in COCO box AP on the user's own data.

    from maedet.bench.accuracy import measure_formats
    report = measure_formats("runs/x/detector", data="val.json", images="val/", input_size=(640, 640))
    report.row("ort-int8-cpu").ap_drop, report.over_budget(1.0)

For every format of :mod:`maedet.bench.accuracy_formats` this machine runs: make the file through the export
pipeline into the bench's cache, score it with :func:`maedet.detect.evaluate` (what ``maedet-eval`` runs) on the
annotated images, then time every format side by side with the bench's rules (warm-up, interleaved rounds, one
real image of the set at the input size, batch 1). Every format gets the same letterboxed input: the images are
fitted into one static ``input_size`` (a multiple of 32), which PyTorch fp32 is fed too. Formats this machine
cannot run are reported as skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maedet.detect import evaluate, load_annotations, load_backend
from maedet.errors import MaeDetError, first_line
from maedet.export.detector import detector_reference, resolve_detector
from maedet.export.precision import calibration_files
from maedet.images import read_image
from maedet.letterbox import collate, letterbox
from maedet.zoo import GFocalV2
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX
from maedet.zoo.detectors import list_detectors

from .accuracy_formats import FORMATS, REFERENCE_FORMAT, Format, FormatJob, resolve_formats
from .accuracy_progress import Steps
from .accuracy_results import ACCURACY, AGREEMENT, AP_NAMES, AccuracyReport, FormatRow, SkippedFormat
from .backends import BACKENDS, unavailable_reason
from .cache import ArtifactCache, default_cache_dir
from .errors import BackendUnavailable, BenchError
from .machine import machine_info
from .pseudo_labels import PSEUDO_LABEL_THRESHOLD, check_threshold, folder_images, pseudo_label_coco
from .runners import Runner
from .suite import BenchSettings, cpu_settings
from .timing import choose_iterations, run_interleaved, summarize, time_call

__all__ = ["measure_formats"]


@dataclass
class _Measured:
    """The formats scored so far, their runners (timed together at the end) and what was skipped."""

    rows: list[FormatRow] = field(default_factory=list)
    runners: dict[str, Runner] = field(default_factory=dict)
    skipped: list[SkippedFormat] = field(default_factory=list)


def _weights_digest(detector: GFocalV2) -> str:
    """The SHA-256 of the architecture and every weight: the cache's key for 'the same detector'."""
    digest = hashlib.sha256(repr(sorted(detector.build_args.items())).encode())
    for name, tensor in sorted(detector.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _calibration_identity(folder: str) -> str:
    """The calibration images by name, size and modification time, hashed (cheap: no pixel is read)."""
    try:
        files = calibration_files(folder)
    except MaeDetError as exc:
        raise BenchError(str(exc)) from None
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    if len(input_size) != 2 or any(int(v) < 32 or int(v) % 32 for v in input_size):
        raise BenchError(
            f"the input size must be two multiples of 32 (H W) of at least 32, got {'x'.join(map(str, input_size))}."
        )
    return int(input_size[0]), int(input_size[1])


def _job(
    detector: str, checkpoint: str | None, input_hw: tuple[int, int], calib: str, settings: BenchSettings
) -> FormatJob:
    """Load the detector once (the checkpoint reader, through :func:`maedet.detect.load_backend`)."""
    reference = detector_reference(detector)
    if not reference.startswith((LOCAL_PREFIX, HUB_PREFIX)) and reference not in list_detectors():
        raise BenchError(
            f"{detector!r} is neither a detector folder (config.json + model.safetensors, as maedet-train and "
            f"maedet-convert write) nor a detector name ({', '.join(list_detectors())})."
        )
    if checkpoint is not None and reference.startswith(LOCAL_PREFIX):
        raise BenchError(f"{detector!r} is a detector folder with its own weights; --checkpoint goes with a name.")
    calib_identity = _calibration_identity(calib)  # a bad folder is refused before the model loads
    deploy = resolve_detector(load_backend(reference, checkpoint).detector)  # type: ignore[attr-defined]
    return FormatJob(
        model=reference,
        checkpoint=checkpoint,
        detector=deploy,
        label=deploy.name,
        weights_digest=_weights_digest(deploy),
        input_hw=input_hw,
        calib=calib,
        calib_identity=calib_identity,
        cache=ArtifactCache(settings.cache_dir or default_cache_dir()),
        threads=settings.threads or 1,
    )


def _timing_input(job: FormatJob, coco: Any, images: str) -> np.ndarray:
    """The first image of the set, letterboxed to the input size and normalised: a real image's NMS workload."""
    first = coco.imgs[sorted(coco.getImgIds())[0]]["file_name"]
    item = letterbox(read_image(Path(images) / first), fixed_hw=job.input_hw)
    return collate([item], job.detector.mean, job.detector.std).numpy()


def _score(job: FormatJob, fmt: Format, coco: Any, images: str, steps: Steps) -> tuple[FormatRow, Path | None]:
    """Make the format's file, check it is usable here, and score it on the images."""
    bench = BACKENDS[fmt.backend]
    with steps.task(f"{fmt.name}: the file", total=1) as advance:
        path = fmt.make(job, fmt)
        advance(1)
    reason = fmt.usable(job, fmt, path) if fmt.usable is not None else None
    if reason:
        raise BackendUnavailable(reason)
    backend = fmt.load(job, fmt, path)
    with steps.task(f"AP of {fmt.name}") as advance:
        result = evaluate(backend, coco, images, on_start=advance.start, on_batch=advance)
    row = FormatRow(
        format=fmt.name,
        backend=fmt.backend,
        device=bench.device,
        precision=fmt.precision,
        ap={name: result.stats[name] for name in AP_NAMES},
        detections=result.detections,
        speedup_over=fmt.speedup_over,
        int8_mode=fmt.int8_mode,
        file=None if path is None else str(path),
    )
    return row, path


def _measure_one(
    job: FormatJob, fmt: Format, coco: Any, images: str, data: np.ndarray, steps: Steps, out: _Measured
) -> None:
    """Score and prepare the timing of one format; anything this machine cannot do becomes a skipped row."""
    reason = unavailable_reason(BACKENDS[fmt.backend])
    if reason is None:
        try:
            row, path = _score(job, fmt, coco, images, steps)
            out.runners[fmt.name] = fmt.timer(job, fmt, path, data)
            out.rows.append(row)
            return
        except (BackendUnavailable, MaeDetError) as exc:
            if fmt.name == REFERENCE_FORMAT:
                raise
            reason = first_line(exc)
    out.skipped.append(SkippedFormat(fmt.name, fmt.backend, reason))


def _time_all(out: _Measured, settings: BenchSettings, steps: Steps) -> None:
    """Warm-up, then every runner in interleaved rounds (bench/timing.py); a runner failing its warm-up is noted."""
    iterations: dict[str, int] = {}
    for name, runner in list(out.runners.items()):
        try:
            warm = [time_call(runner) for _ in range(settings.warmup)]
        except (BackendUnavailable, MaeDetError, MemoryError) as exc:
            out.rows[[r.format for r in out.rows].index(name)].note = f"not timed: {first_line(exc)}"
            runner.close()
            del out.runners[name]
            continue
        iterations[name] = settings.iterations or choose_iterations(warm[-1])
    deadline = time.monotonic() + settings.max_time_s if settings.max_time_s else None
    with steps.task("timing (interleaved rounds)", total=settings.rounds) as advance:
        times = run_interleaved(
            out.runners,
            iterations,
            max_rounds=settings.rounds,
            min_rounds=settings.min_rounds,
            deadline=deadline,
            on_round=lambda done, planned: advance(1),
        )
    for runner in out.runners.values():
        runner.close()
    for row in out.rows:
        if times.get(row.format):
            row.latency = summarize(times[row.format])


def _compare(rows: list[FormatRow]) -> None:
    """AP drops against PyTorch fp32, speedups against the fp32 format of the same runtime."""
    reference = next(r for r in rows if r.format == REFERENCE_FORMAT)
    by_name = {r.format: r for r in rows}
    for row in rows:
        row.ap_drop = 100.0 * (reference.ap["AP"] - row.ap["AP"])
        base = by_name.get(row.speedup_over or "")
        if base is not None and base.latency is not None and row.latency is not None and row.latency.median > 0:
            row.speedup = base.latency.median / row.latency.median


def _pseudo_ground_truth(job: FormatJob, images: str, threshold: float, steps: Steps) -> Any:
    """PyTorch fp32's confident detections on the images, as the ground truth (see :mod:`.pseudo_labels`)."""
    reference = FORMATS[REFERENCE_FORMAT].load(job, FORMATS[REFERENCE_FORMAT], None)
    with steps.task("pseudo-labels (PyTorch fp32)", total=len(folder_images(images))) as advance:
        return pseudo_label_coco(reference, images, threshold, on_batch=advance)


def _check_inputs(data: str | None, images: str, pseudo_labels: bool) -> None:
    if pseudo_labels and data is not None:
        raise BenchError("--pseudo-labels makes the ground truth from the images; give it without --data.")
    if not pseudo_labels and data is None:
        raise BenchError("say what to score against: --data val.json (COCO annotations) or --pseudo-labels.")
    if not Path(images).is_dir():
        raise BenchError(f"image folder {str(images)!r} does not exist or is not a folder.")


def _config(job: FormatJob, formats: list[Format], settings: BenchSettings, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "detector": job.model,
        "checkpoint": job.checkpoint,
        "input_size": list(job.input_hw),
        "batch": 1,
        "formats": [f.name for f in formats],
        "calibration": job.calib,
        "threads": settings.threads,
        "warmup": settings.warmup,
        "max_rounds": settings.rounds,
        "min_rounds": settings.min_rounds,
        "max_time_s": settings.max_time_s,
        "timing": "interleaved rounds over every format, one image of the set at the input size, batch 1",
        **extra,
    }


def measure_formats(
    detector: str,
    *,
    images: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    input_size: Sequence[int] = (640, 640),
    formats: str | None = None,
    pseudo_labels: bool = False,
    score_threshold: float = PSEUDO_LABEL_THRESHOLD,
    calib: str | os.PathLike[str] | None = None,
    settings: BenchSettings | None = None,
) -> AccuracyReport:
    """COCO box AP/AP50/AP75 and latency of ``detector`` in every format (a comma list, default all) this machine
    runs, and each format's AP drop against PyTorch fp32 (see the module docstring).

    ``detector``: a trained or converted detector folder, or a detector name with ``checkpoint``. ``data``: COCO
    annotations of the images in ``images``; or ``pseudo_labels``: PyTorch fp32's detections scoring at least
    ``score_threshold`` are the ground truth, and the figures measure agreement, not accuracy. INT8 is calibrated
    on ``calib`` (default: ``images``). ``settings``: the bench's timing settings (warm-up, rounds, time budget,
    threads, cache folder, progress).
    """
    started = time.monotonic()
    images, data = str(images), None if data is None else str(data)
    _check_inputs(data, images, pseudo_labels)
    if pseudo_labels:
        check_threshold(score_threshold)
    chosen = resolve_formats(formats)
    settings = (settings or BenchSettings()).validated()
    input_hw = _check_size(input_size)
    coco = None if pseudo_labels else load_annotations(data)  # a bad file is refused before the model loads
    calib_dir = str(calib if calib is not None else images)
    job = _job(detector, None if checkpoint is None else str(checkpoint), input_hw, calib_dir, settings)
    out = _Measured()
    with cpu_settings(job.threads), Steps(settings.progress) as steps:
        coco = coco if coco is not None else _pseudo_ground_truth(job, images, score_threshold, steps)
        timing_input = _timing_input(job, coco, images)
        for fmt in chosen:
            _measure_one(job, fmt, coco, images, timing_input, steps, out)
        _time_all(out, settings, steps)
    _compare(out.rows)
    notes = []
    if calib is None and any((f.file_precision or f.precision) == "int8" for f in chosen):
        notes.append(f"INT8 calibrated on the evaluated images ({images}); --calib DIR for others")
    extra = {"data": data, "images": images, "pseudo_labels": pseudo_labels}
    if pseudo_labels:
        extra["pseudo_label_score_threshold"] = score_threshold
    return AccuracyReport(
        machine=machine_info(settings.threads),
        config=_config(job, chosen, settings, extra),
        metric=AGREEMENT if pseudo_labels else ACCURACY,
        rows=out.rows,
        skipped=out.skipped,
        notes=notes,
        elapsed_s=time.monotonic() - started,
    )
