"""Profile and validate whole detectors on a latency table's target: the FPN, GFocalV2 head and postprocess.

``maedet-bench profile --detector --out T.json`` adds a ``detector`` section to a profiled table (profiling the
table first if there is none). It times a few whole GFocalV2 detectors (random backbones of the space, FPN widths
128..256, the target's input size and a smaller and a larger one so the postprocess is seen at several sizes)
exactly as the bench runs them (bench/detectors.py's deploy form and fixed NMS workload, exported with NMS in the
graph, run through the runtime layer with the runtime's profiler on), beside the same anchor as every profile.
Each kernel is attributed by its node's name to the backbone, the neck and head's convs, GroupNorm + ReLU, the
upsample + add, the head's per-level arithmetic or the postprocess; the new roles are fitted like the backbone's
(bench/profile_fit.py), the convs keep the table's conv roles, and a scale calibrates the neck and head on the
target-size detectors measured end to end. MAE-DET-S/M/L and ResNet-50/101 GFL are measured as references
(``1.0xresnet50_gfl`` budgets) and held-out detectors validate the whole-detector prediction.
``maedet-bench profile --validate T.json --detector`` measures fresh held-out detectors against the table.
Both resume from a ``.partial`` beside the output. zoo/latency/detector.py is the predictor.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import check_output_path
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable, Op
from maedet.zoo.latency.detector import (
    DETECTOR_ROLES,
    RESNET_DETECTORS,
    RESNET_WIDTHS,
    DetectorHead,
    DetectorLatency,
    detector_widths,
    neck_head_ops,
    post_op,
)

from .cache import _quiet_logging as quiet_logging
from .profile import ProfileSettings, sample_structures
from .profile_figures import validation_section
from .profile_fit import fit_op_model
from .profile_measure import Measurer, Timing, steady_ms
from .profile_progress import profile_progress
from .profile_state import MeasuredUnits
from .profile_validate import anchor_reference, measurement_settings, table_digest

__all__ = [
    "DetectorUnit",
    "attribute_detector_node",
    "bench_module",
    "detector_rows",
    "fit_detector_section",
    "profile_detector",
    "validate_detectors",
]

LOG = logging.getLogger("maedet.bench.profile")
PARTIAL_FORMAT = "maedet-latency-detector-partial/1"
PUBLISHED_DETECTORS = ("maedet_s_gfl", "maedet_m_gfl", "maedet_l_gfl")
REFERENCE_DETECTORS = RESNET_DETECTORS
TRAIN_SEED, HELD_OUT_SEED, VALIDATE_SEED = 201, 301, 401  # apart from the backbone profile's streams
TRAIN_FPN = (256, 192, 128)
CATEGORIES = {"det.gn": "gn", "det.upadd": "upadd", "det.misc": "headmisc", "det.post": "post"}


@dataclass(frozen=True)
class DetectorUnit:
    """One detector to time: a built-in detector name or a backbone Structure, its FPN width, its input side."""

    backbone: str | Structure
    fpn_channels: int
    size: int

    @property
    def head(self) -> DetectorHead:
        return DetectorHead(fpn_channels=self.fpn_channels)

    @property
    def structure(self) -> Structure | None:
        """The backbone as a member of the space (None for the ResNets, which the table does not predict)."""
        if isinstance(self.backbone, Structure):
            return self.backbone
        name = self.backbone.removesuffix("_gfl")
        return builtin_structure(name) if name.startswith("maedet_") else None


def attribute_detector_node(name: str) -> str | None:
    """A detector's node → its part, from the module path in its name (the exporter writes them; the joined
    postprocess graph's nodes start with ``postprocess/``)."""
    if "/detector/backbone/" in name:
        return "backbone"
    if name.startswith("postprocess/"):
        return "det.post"
    if "/detector/neck/" in name:
        return "det.conv" if "_convs." in name else "det.upadd"
    if "/detector/head/" not in name:
        return None
    if "tower" in name:
        return "det.gn" if "/norm" in name or "/act" in name else "det.conv"
    return "det.conv" if any(p in name for p in ("/cls_out/", "/reg_out/", "/fc1/", "/fc2/")) else "det.misc"


class DetectorMeasurer(Measurer):
    """The profile's measurer, for whole detectors exported as the bench exports them (NMS in the graph)."""

    def detector(self, unit: DetectorUnit, *, profiled: bool = False) -> Timing:
        from maedet.export import ExportOptions, export_onnx

        s = self.settings
        path = self.workdir / "detector.onnx"
        options = ExportOptions(input_size=(unit.size, unit.size), batch=s.batch, outputs="features",
                                precision=s.precision, check=False, opset=s.opset, nms=True)  # fmt: skip
        with quiet_logging():  # the exporter's advice on every export, as the bench's own cache keeps it quiet
            export_onnx(bench_module(unit), path, options)
        prefix = self.workdir / "ort-profile" if profiled else None
        runner = self._runner(path.read_bytes(), (s.batch, 3, unit.size, unit.size), prefix)
        path.unlink()
        return self.timed(runner, profiled, attribute_detector_node)


def bench_module(unit: DetectorUnit) -> Any:
    """The bench's deploy form of the unit (bench/detectors.py: seeded weights, the fixed NMS workload)."""
    import torch

    from maedet.export.detector import resolve_detector
    from maedet.zoo import create_detector

    from .detectors import CANDIDATE_CLASS_BIAS, bench_detector

    if isinstance(unit.backbone, str):
        return bench_detector(unit.backbone)
    torch.manual_seed(0)
    detector = create_detector("gfl", structure=unit.backbone, fpn_channels=unit.fpn_channels)
    with torch.no_grad():
        detector.head.cls_out.bias[0] = CANDIDATE_CLASS_BIAS
    return resolve_detector(detector)


# ------------------------------------------------------------------------------------------- what to measure
def _side(size: float) -> int:
    return max(64, round(size / 32) * 32)


def train_units(count: int, seed: int, size: int) -> dict[str, DetectorUnit]:
    """Random backbones with FPN widths 256/192/128; every other one at the target size (they calibrate), the rest
    at ¾ and 1¼ of it (the postprocess at several sizes)."""
    others = (_side(0.75 * size), _side(1.25 * size))
    return {
        f"dtrain{i}": DetectorUnit(s, TRAIN_FPN[i % len(TRAIN_FPN)], size if i % 2 == 0 else others[(i // 2) % 2])
        for i, s in enumerate(sample_structures(count, seed + TRAIN_SEED, _side(size)))
    }


def named_units(size: int) -> dict[str, DetectorUnit]:
    from maedet.zoo.detectors import DETECTORS

    return {n: DetectorUnit(n, DETECTORS[n].fpn_channels, size) for n in (*PUBLISHED_DETECTORS, *REFERENCE_DETECTORS)}


def held_out_units(count: int, seed: int, size: int, exclude: set[str]) -> dict[str, DetectorUnit]:
    """Random backbones the training never saw, with the default 256-wide FPN, at the target size."""
    pool = [s for s in sample_structures(count + len(exclude), seed, size) if s.to_json() not in exclude]
    return {f"dval{i}": DetectorUnit(s, 256, size) for i, s in enumerate(pool[:count])}


def _measure(
    units: Mapping[str, DetectorUnit], profiled: set[str], state: MeasuredUnits, measurer: DetectorMeasurer,
    step: Callable[[int, str], None],
) -> None:  # fmt: skip
    step(sum(1 for name in units if name in state.units), "already measured (resumed)")
    for name, unit in units.items():
        if name not in state.units:
            state.units[name] = measurer.detector(unit, profiled=name in profiled)
            state.save()
            step(1, f"detector {name} at {unit.size} px")


def measure_detectors(
    out: Path, settings: ProfileSettings, units: Mapping[str, DetectorUnit], profiled: set[str],
    fingerprint: dict[str, Any], progress: bool, on_step: Callable[[int], None] | None,
) -> MeasuredUnits:  # fmt: skip
    """Every unit on the settings' target (``profiled`` ones with their kernels), resumable from
    OUT.detector.partial (apart from the backbone profile's OUT.partial)."""
    state = MeasuredUnits(out.with_name(out.name + ".detector"), fingerprint, PARTIAL_FORMAT)
    with tempfile.TemporaryDirectory(prefix="maedet-profile-") as tmp, profile_progress(progress, len(units)) as show:

        def step(n: int, label: str) -> None:
            show(n, label)
            if on_step is not None and n:
                on_step(n)

        _measure(units, profiled, state, DetectorMeasurer(settings, tmp), step)
    return state


# ------------------------------------------------------------------------------------------- fitting
def _unit_ops(unit: DetectorUnit) -> list[Op]:
    assert unit.structure is not None
    return [*neck_head_ops(detector_widths(unit.structure), unit.head, unit.size), post_op(unit.head, unit.size)]


def _role_samples(
    units: Mapping[str, DetectorUnit], timings: Mapping[str, Timing], ref: float
) -> list[tuple[list[Op], float]]:
    """Per profiled detector and new role, that role's operators and their summed kernel time (steady ms)."""
    samples = []
    for name, unit in units.items():
        timing = timings[name]
        ops = _unit_ops(unit)
        for key, role in CATEGORIES.items():
            mine = [op for op in ops if op.role == role]
            if mine and key in timing.ops:
                samples.append((mine, steady_ms(timing.ops[key], timing.anchor, ref)))
    return samples


def _unit_predictor(table: LatencyTable, section: Mapping[str, Any], unit: DetectorUnit) -> DetectorLatency:
    return DetectorLatency(table, {**section, "head": unit.head.to_dict()})


def fit_detector_section(
    table: LatencyTable,
    units: Mapping[str, DetectorUnit],
    timings: Mapping[str, Timing],
    ref: float,
    references: Mapping[str, DetectorUnit] | None = None,
) -> dict[str, Any]:
    """The new roles fitted on the profiled detectors' kernels; the neck and head's scale calibrated end to end
    (measured − backbone − predicted postprocess ≈ scale × Σ operators) on the detectors at the target's size with
    the FPN width the section prices (256): the fitted ones (backbone predicted) and the ResNet detectors of
    ``references`` (backbone: the table's measured ResNet time).

    Why only that width: the FPN widths 128 and 192 are fitted for the roles' kernels, but end to end their
    neck and head took 0.71× and 0.95× the operator sum where the 256-wide ones took 0.86–1.02× (measured at 640 px);
    a scale fitted across widths left every 256-wide held-out detector 4–15% low (RMSPE 8.8%), one fitted on the
    256-wide ones 1.3% low on average (RMSPE 3.0%)."""
    block = int(table.model.get("channel_block", 1))
    model = fit_op_model(_role_samples(units, timings, ref), table.batch, blocks=(block,))
    roles = {r: model["roles"].get(r, [0.0] * 5) for r in DETECTOR_ROLES}
    section: dict[str, Any] = {"head": DetectorHead().to_dict(), "roles": roles}
    priced = DetectorHead().fpn_channels
    calibrating: list[tuple[DetectorUnit, float, tuple[int, ...], str]] = []
    for name, unit in units.items():
        if unit.size == table.input_size and unit.structure is not None and unit.fpn_channels == priced:
            calibrating.append((unit, table.predict_ms(unit.structure), detector_widths(unit.structure), name))
    for name, unit in (references or {}).items():
        backbone = table.references.get(name.removesuffix("_gfl"))
        if unit.size == table.input_size and unit.fpn_channels == priced and backbone and name in timings:
            calibrating.append((unit, float(backbone), RESNET_WIDTHS, name))
    ratios = []
    for unit, backbone_ms, widths, name in calibrating:
        predictor = _unit_predictor(table, section, unit)
        rest = steady_ms(timings[name].times, timings[name].anchor, ref) - backbone_ms - predictor.post_ms()
        ratios.append(predictor.raw_neck_head_ms(widths) / rest)
    r = np.asarray(ratios)
    if not len(r) or not np.all(r > 0):
        raise MaeDetError("the detector measurements leave no positive neck and head time to calibrate; profile again.")
    scale = float(np.sum(r) / np.sum(r**2))  # least squares on relative error of scale × Σ ops against the rest
    section["calibration"] = {"scale": scale, "offset_ms": 0.0}
    section["fit_rmspe_pct"] = model["fit_rmspe_pct"]
    return section


def detector_rows(
    table: LatencyTable, section: Mapping[str, Any], units: Mapping[str, DetectorUnit],
    timings: Mapping[str, Timing], ref: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per predicted detector: measured (steady, unscaled) and predicted ms, with the prediction's parts."""
    rows = []
    for name, unit in units.items():
        if unit.structure is None:
            continue
        parts = _unit_predictor(table, section, unit).predict(unit.structure)
        rows.append({"name": name, "structure": unit.structure.to_authors(), "fpn_channels": unit.fpn_channels,
                     "measured_ms": steady_ms(timings[name].times, timings[name].anchor, ref),
                     "measured_raw_ms": float(np.median(timings[name].times)), "predicted_ms": parts["total_ms"],
                     "parts": parts})  # fmt: skip
    return rows


def _references(units: Mapping[str, DetectorUnit], timings: Mapping[str, Timing], ref: float) -> dict[str, float]:
    named = (*PUBLISHED_DETECTORS, *REFERENCE_DETECTORS)
    return {n: steady_ms(timings[n].times, timings[n].anchor, ref) for n in units if n in named}


# ------------------------------------------------------------------------------------------- the commands
def _settings(table: LatencyTable, rounds: int, seed: int) -> ProfileSettings:
    settings = measurement_settings(table.target, rounds, seed)
    if settings.backend != "ort-cpu" or settings.precision != "fp32":
        raise MaeDetError(
            "whole detectors are profiled on ONNX Runtime CPU fp32 tables (their kernels are timed by its profiler); "
            f"this table's target is {settings.backend} {settings.precision}."
        )
    return settings


def profile_detector(
    table_path: str | Path,
    out: str | Path | None = None,
    *,
    train: int = 6,
    held_out: int = 8,
    rounds: int = 5,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> LatencyTable:
    """Add the detector section to a profiled table (written to ``out``, by default the table itself)."""
    if not 2 <= train <= 100 or not 1 <= held_out <= 500:
        raise MaeDetError(f"detector networks: 2 to 100 to fit and 1 to 500 held out, got {train} and {held_out}.")
    started = time.monotonic()
    table = LatencyTable.load(table_path)
    out_path = check_output_path(out if out is not None else table_path, "latency table")
    settings = _settings(table, rounds, seed)
    fitted = train_units(train, seed, table.input_size)
    exclude = {u.structure.to_json() for u in fitted.values() if u.structure is not None}
    validation = held_out_units(held_out, seed + HELD_OUT_SEED, table.input_size, exclude)
    units = {**fitted, **named_units(table.input_size), **validation}
    # What the measurements depend on: the target and the drawn detectors, not the table's fitted model, so a table
    # re-fitted from its own profile's measurements resumes them.
    fingerprint = {"train": train, "held_out": held_out, **settings.fingerprint()}
    state = measure_detectors(out_path, settings, units, set(fitted), fingerprint, progress, on_step)
    ref, _ = anchor_reference(table, state.units)
    references = {n: u for n, u in units.items() if n in REFERENCE_DETECTORS}
    section = fit_detector_section(table, fitted, state.units, ref, references)
    section["references"] = _references(units, state.units, ref)
    predicted = {k: u for k, u in units.items() if k not in fitted}
    section["validation"] = validation_section(detector_rows(table, section, predicted, state.units, ref))
    section["validation"]["wall_s"] = round(time.monotonic() - started, 1)
    section["measurement"] = {"train": train, "held_out": held_out, "rounds": rounds, "seed": seed,
                              "sizes": sorted({u.size for u in fitted.values()}), "anchor_quiet_ms": ref}  # fmt: skip
    table.detector = section
    table.save(out_path)
    state.done()
    return table


def _profiled_backbones(table: LatencyTable) -> set[str]:
    """The backbones the detector profile timed (fitted and held out), as Structure JSON, never drawn again."""
    m = table.detector.get("measurement") or {}
    seed, size = int(m.get("seed", 0)), table.input_size
    fitted = train_units(int(m.get("train", 6)), seed, size)
    seen = {u.structure.to_json() for u in fitted.values() if u.structure is not None}
    return seen | {
        u.structure.to_json()
        for u in held_out_units(int(m.get("held_out", 8)), seed + HELD_OUT_SEED, size, seen).values()
        if u.structure is not None
    }


def validate_detectors(
    table_path: str | Path,
    networks: int,
    *,
    out: str | Path | None = None,
    plot: str | Path | None = None,
    rounds: int = 5,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> LatencyTable:
    """Measure ``networks`` fresh held-out detectors (+ MAE-DET-S/M/L, ResNet-50/101 GFL) end to end on the table's
    target and write them with the figures into the detector section's ``validation`` (and a plot)."""
    from .profile_validate import default_plot_path, write_with_plot

    if not 1 <= networks <= 1000:
        raise MaeDetError(f"--networks must be between 1 and 1000, got {networks}.")
    started = time.monotonic()
    table = LatencyTable.load(table_path)
    table.detector_latency()  # a table without the section: one sentence
    out_path = check_output_path(out if out is not None else table_path, "latency table")
    plot_path = check_output_path(plot if plot is not None else default_plot_path(out_path), "plot")
    settings = _settings(table, rounds, seed)
    fresh = held_out_units(networks, seed + VALIDATE_SEED, table.input_size, _profiled_backbones(table))
    units = {**fresh, **named_units(table.input_size)}
    fingerprint = {"table": table_digest(table) + "+detector", "networks": networks, **settings.fingerprint()}
    state = measure_detectors(out_path, settings, units, set(), fingerprint, progress, on_step)
    ref, _ = anchor_reference(table, state.units)
    section = table.detector
    measured = _references(units, state.units, ref)
    refs = {n: {"measured_ms": ms, "table_ms": section.get("references", {}).get(n)} for n, ms in measured.items()}
    earlier = {k: v for k, v in (section.get("validation") or {}).items() if k != "earlier"}
    report = validation_section(detector_rows(table, section, units, state.units, ref))
    report |= {"references": refs, "requested": networks, "wall_s": round(time.monotonic() - started, 1)}
    table.detector = {**section, "validation": report | ({"earlier": earlier} if earlier else {})}
    title = f"{table_path}: {networks} held-out whole detectors + MAE-DET-S/M/L GFL"
    write_with_plot(table, out_path, plot_path, title, report)
    state.done()
    return table
