"""How well a latency table predicts on this machine: fresh held-out networks, measured like the profile measures.

``maedet-bench profile --validate T.json --networks N`` draws N random members of the search space the table never
saw, stratified by their predicted latency so the whole range from the smallest to the largest is covered (a plain
random draw piles up in the middle), adds MAE-DET-S/M/L, measures them with the profiler's own code and timing
rules (every network in interleaved rounds beside the anchor, :mod:`.profile_measure`), and writes every network's
measured and predicted time into the table's ``validation`` section with the figures of :mod:`.profile_figures`,
against steady (anchor-scaled) and unscaled times, plus a plot. ResNet-50/101 are measured too: they are no member
of the space, so they are not predicted, but the table's relative budgets rest on their stored times, which the
report sets beside today's. A transferred table (:mod:`.profile_transfer`) is validated by the same code.

A network measured while the machine was disturbed (its anchor's median more than DISTURBED_ANCHOR times the run's
quiet anchor time) is measured once more after the others, and the quieter of its two measurements is kept: the
anchor's per-round scaling cancels a slow phase that slows both alike, but not one that slows the small anchor far
more than the network (seen on a shared VM: anchor +35 %, network +10 %, the network read 12–20 % fast). The choice
reads only the anchor, never the network's time or its prediction.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import check_output_path, refuse_overwriting_inputs, write_all_or_none
from maedet.zoo import Structure, builtin_structure, load_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.goal import missed_goal_sentence

from .machine import cpu_model
from .profile import PUBLISHED, REFERENCES, ProfileSettings, sample_structures
from .profile_figures import validation_section
from .profile_measure import Measurer, Timing, quiet_anchor_ms, steady_ms
from .profile_plot import validation_plot
from .profile_progress import profile_progress
from .profile_state import MeasuredUnits

__all__ = [
    "disturbed_units",
    "held_out_structures",
    "measure_units",
    "measurement_settings",
    "profiled_networks",
    "report_rows",
    "validate_table",
    "warn_if_missed",
    "write_with_plot",
]

LOG = logging.getLogger("maedet.bench.profile")
VALIDATE_FORMAT = "maedet-latency-validation-partial/1"
VALIDATION_SEED = 101  # offset of the held-out draws from --seed: apart from the profile's streams (seed + 1..3)
PROFILE_DRAWS = 700  # the profile draws at most 500 + 100 + 100 networks per stream; never re-use one of them
POOL_PER_NETWORK = 8  # candidates drawn per requested network, from which the strata are filled
DISTURBED_ANCHOR = 1.2  # an anchor median this far over the run's quiet anchor time marks a disturbed measurement
MIN_UNITS_FOR_QUIET = 8  # fewer measured units give no trustworthy quiet anchor time to judge them by


def measurement_settings(target: Mapping[str, Any], rounds: int, seed: int = 0) -> ProfileSettings:
    """The profiler's settings for a table's target: the same runtime, precision, size, batch, threads, rounds."""
    return ProfileSettings(
        backend=str(target.get("backend")),
        precision=str(target.get("precision")),
        input_size=int(target["input_size"]),
        batch=int(target["batch"]),
        threads=target.get("threads"),
        rounds=rounds,
        seed=seed,
    )


def profiled_networks(table: LatencyTable) -> set[str]:
    """Every network the table's profile may have measured (its training, calibration and validation draws, and
    the validation and transfer networks it stores), as Structure JSON, so a held-out draw never repeats one."""
    seed, size = int(table.measurement.get("seed", 0)), table.input_size
    seen = {s.to_json() for stream in (2, 3) for s in sample_structures(PROFILE_DRAWS, seed + stream, size)}
    transfer = table.measurement.get("transfer") or {}
    for row in [*table.validation.get("networks", []), *transfer.get("networks", [])]:
        try:
            seen.add(load_structure(row["structure"]).to_json())
        except (MaeDetError, KeyError, TypeError):
            continue
    return seen


def held_out_structures(
    predictor: LatencyTable, count: int, seed: int, exclude: set[str], prefix: str = "val"
) -> dict[str, Structure]:
    """``count`` random members of the space outside ``exclude``, one from each of ``count`` equal strata of the
    log predicted latency (an empty stratum's place goes to a random one of the rest), smallest first."""
    pool = [
        s
        for s in sample_structures(POOL_PER_NETWORK * count + 20, seed, predictor.input_size)
        if s.to_json() not in exclude
    ]
    if len(pool) < count:
        raise MaeDetError(f"could not draw {count} distinct held-out networks; ask for fewer.")
    log_ms = np.log([predictor.predict_ms(s) for s in pool])
    edges = np.linspace(log_ms.min(), log_ms.max(), count + 1)
    strata = np.clip(np.searchsorted(edges, log_ms, side="right") - 1, 0, count - 1)
    rng = random.Random(seed)
    chosen: list[int] = []
    for stratum in range(count):
        members = [i for i in range(len(pool)) if strata[i] == stratum]
        if members:
            chosen.append(rng.choice(members))
    rest = [i for i in range(len(pool)) if i not in set(chosen)]
    chosen += rng.sample(rest, count - len(chosen))
    chosen.sort(key=lambda i: log_ms[i])
    return {f"{prefix}{n}": pool[i] for n, i in enumerate(chosen)}


def measure_units(
    units: Mapping[str, Structure | str],
    state: MeasuredUnits,
    measurer: Measurer,
    step: Callable[[int, str], None],
    stage: Callable[[str], str],
) -> None:
    """Every network not yet in the state, in order, each saved at once (resumable); ``stage`` labels progress."""
    step(sum(1 for name in units if name in state.units), "already measured (resumed)")
    for name, network in units.items():
        if name not in state.units:
            state.units[name] = measurer.network(network)
            state.save()
            step(1, f"{stage(name)} network {name}")
    for name in disturbed_units({name: state.units[name] for name in units}):
        again = measurer.network(units[name])
        if statistics.median(again.anchor) < statistics.median(state.units[name].anchor):
            state.units[name] = again
            state.save()
        step(0, f"{stage(name)} network {name} again (its first measurement was disturbed)")


def disturbed_units(units: Mapping[str, Timing], ratio: float = DISTURBED_ANCHOR) -> list[str]:
    """The units whose anchor ran, by its median over their rounds, more than ``ratio`` times the quiet anchor
    time of all of them (:func:`~.profile_measure.quiet_anchor_ms`); none when too few units tell what is quiet."""
    if len(units) < MIN_UNITS_FOR_QUIET:
        return []
    quiet = quiet_anchor_ms(units)
    return [name for name, t in units.items() if statistics.median(t.anchor) > ratio * quiet]


def measure_all(
    out: Path,
    settings: ProfileSettings,
    units: Mapping[str, Structure | str],
    fingerprint: dict[str, Any],
    partial_format: str,
    progress: bool,
    on_step: Callable[[int], None] | None,
    stage: Callable[[str], str],
) -> MeasuredUnits:
    """Measure ``units`` on the settings' target, resuming from (and saving to) ``OUT.partial``."""
    state = MeasuredUnits(out, fingerprint, partial_format)
    with tempfile.TemporaryDirectory(prefix="maedet-profile-") as tmp, profile_progress(progress, len(units)) as show:

        def step(n: int, label: str) -> None:
            show(n, label)
            if on_step is not None and n:
                on_step(n)

        measure_units(units, state, Measurer(settings, tmp), step, stage)
    return state


def report_rows(
    table: LatencyTable, networks: Mapping[str, Structure], units: Mapping[str, Timing], reference: float
) -> list[dict[str, Any]]:
    """One row per predicted network: its structure, steady and unscaled measured ms, and the table's prediction."""
    return [
        {
            "name": name,
            "structure": structure.to_authors(),
            "measured_ms": steady_ms(units[name].times, units[name].anchor, reference),
            "measured_raw_ms": float(np.median(units[name].times)),
            "predicted_ms": table.predict_ms(structure),
        }
        for name, structure in networks.items()
    ]


def anchor_reference(table: LatencyTable, units: Mapping[str, Timing]) -> tuple[float, str]:
    """The anchor's quiet time steady times are scaled to: the table's own (its predictions are in its steady ms)
    when it records one for this target's anchor, else this run's (the profile's rule: a low percentile)."""
    stored = (table.measurement.get("anchor") or {}).get("quiet_ms")
    if isinstance(stored, (int, float)) and stored > 0:
        return float(stored), "the table's"
    return quiet_anchor_ms(units), "this run's"


def validation_report(
    table: LatencyTable, held_out: Mapping[str, Structure], units: Mapping[str, Timing], extra: dict[str, Any]
) -> dict[str, Any]:
    """The ``validation`` section: held-out networks and S/M/L predicted and measured, the figures, ResNets."""
    reference, whose = anchor_reference(table, units)
    networks = {**held_out, **{name: builtin_structure(name) for name in PUBLISHED}}
    section = validation_section(report_rows(table, networks, units, reference))
    measured_refs = {
        name: {
            "measured_ms": steady_ms(units[name].times, units[name].anchor, reference),
            "table_ms": table.references.get(name),
        }
        for name in REFERENCES
        if name in units
    }
    run_quiet = quiet_anchor_ms(units)
    anchor = {"quiet_ms": reference, "from": whose, "this_run_quiet_ms": run_quiet}
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return section | {"anchor": anchor, "references": measured_refs, "machine": cpu_model(), "created": created} | extra


def table_digest(table: LatencyTable) -> str:
    """What the predictions depend on (target, model, calibration): a resumed validation must predict the same."""
    data = {"target": table.target, "model": table.model, "calibration": table.calibration}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_with_plot(
    table: LatencyTable, out: Path, plot: Path, title: str, validation: Mapping[str, Any] | None = None
) -> None:
    """The table and the plot of its validation (or of ``validation``, e.g. its detectors'), both or neither."""
    text = json.dumps(table.to_dict(), indent=1, allow_nan=False) + "\n"
    validation = table.validation if validation is None else validation
    png = validation_plot(validation["networks"], validation, title)
    write_all_or_none(
        [(out, lambda tmp: tmp.write_text(text, encoding="utf-8")), (plot, lambda tmp: tmp.write_bytes(png))]
    )


def warn_if_missed(table: LatencyTable, where: str) -> None:
    """The profile's warning, with the figures and what to try, when the report misses the goal."""
    if table.validation.get("meets_goal") is False:
        LOG.warning("%s", missed_goal_sentence(where, table.target, table.validation))


def default_plot_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.validation.png")


def validate_table(
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
    """Measure ``networks`` fresh held-out networks (+ S/M/L, ResNet-50/101) on the table's target and write the
    table with their report as its ``validation`` (to ``out``, by default the table itself) and the plot."""
    if not 1 <= networks <= 1000:
        raise MaeDetError(f"--networks must be between 1 and 1000, got {networks}.")
    started = time.monotonic()
    table = LatencyTable.load(table_path)
    out_path = check_output_path(out if out is not None else table_path, "latency table")
    plot_path = check_output_path(plot if plot is not None else default_plot_path(out_path), "plot")
    refuse_overwriting_inputs({"the table": str(table_path)}, {"plot": str(plot_path)})
    settings = measurement_settings(table.target, rounds, seed)
    if table.target.get("device") not in (None, cpu_model()) and settings.backend.endswith("cpu"):
        LOG.warning("the table was profiled on %s and is validated on %s", table.target.get("device"), cpu_model())
    held_out = held_out_structures(table, networks, seed + VALIDATION_SEED, profiled_networks(table))
    units: dict[str, Structure | str] = {**held_out, **{n: builtin_structure(n) for n in PUBLISHED}}
    units |= {name: name for name in REFERENCES}
    fingerprint = {"table": table_digest(table), "networks": networks, **settings.fingerprint()}
    stage = _stage_label(held_out)
    state = measure_all(out_path, settings, units, fingerprint, VALIDATE_FORMAT, progress, on_step, stage)
    earlier = {k: v for k, v in table.validation.items() if k != "earlier"}
    extra = {"requested": networks, "seed": seed, "rounds": rounds, "wall_s": round(time.monotonic() - started, 1)}
    table.validation = validation_report(table, held_out, state.units, extra) | (
        {"earlier": earlier} if earlier else {}
    )
    write_with_plot(table, out_path, plot_path, f"{table_path}: {len(held_out)} held-out networks + MAE-DET-S/M/L")
    state.done()
    warn_if_missed(table, f"the validated table {str(out_path)!r}")
    return table


def _stage_label(held_out: Mapping[str, Structure]) -> Callable[[str], str]:
    return lambda name: "held-out" if name in held_out else ("published" if name in PUBLISHED else "reference")
