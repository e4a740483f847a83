"""INT8 under an accuracy budget: the fewest layers kept in float that hold the accuracy drop within a limit.

The recipe of NNCF's ``quantize_with_accuracy_control`` and Polygraphy's ``debug precision``, on ONNX Runtime's
quantizer (docs/int8.md):

1. Calibrate once; the activation ranges are cached and reused by every later quantization of the same graph.
2. The layers are the nodes ONNX Runtime's quantizer quantizes (its op registries, as ``quantize_static`` reads the
   fp32 graph) that compute values and take a dequantized input in the full INT8 graph; ops that only move or
   select values share one scale with their input and are left out.
3. Score the fp32 file and the full INT8 file with the accuracy measure (COCO AP in points for a detector). Within
   the budget already: no layer stays float.
4. Rank the layers by sensitivity, cheaply: how much the network's output error against fp32 (on the first
   calibration batches) falls when that layer alone stays float.
5. Keep the top 1, 2, 4, ... layers in float, scoring each file with the measure, until one is within the budget,
   then bisect down to the shortest ranked prefix within it (about 2·log2(n) + 1 scores, not n). None within it
   (at most ``max_float_layers``): one sentence, nothing written.

The algorithm sits in the export layer and takes the measure as a parameter (:class:`AccuracyMeasure`); COCO AP
lives in :mod:`maedet.detect` and is plugged in from there (``maedet-export --data/--images``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from .errors import ExportError
from .precision import quantize_int8

__all__ = [
    "AccuracyMeasure",
    "BudgetResult",
    "OutputError",
    "Selection",
    "budgeted_int8",
    "ort_latency_ms",
    "quantized_layers",
    "rank_layers",
    "select_float_layers",
]

logger = logging.getLogger(__name__)

ERROR_BATCHES = 8  # calibration batches the output error is measured on (ranking only)
LATENCY_RUNS, LATENCY_WARMUP = 20, 3  # a report, not a benchmark: the median of a short fixed number of runs
# Quantized ops that only move, select or clamp values: their Q/DQ shares the input's scale, so keeping one alone in
# float changes (almost) nothing, and ranking them would only cost time.
SCALE_SHARING_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Gather", "GatherElements",
     "Pad", "MaxPool", "Resize", "Concat", "TopK", "Where", "Relu", "Clip", "ArgMax"}
)  # fmt: skip


@runtime_checkable
class AccuracyMeasure(Protocol):
    """A score of one exported file, higher is better (COCO AP in points for a detector); ``name`` labels it."""

    name: str

    def __call__(self, path: Path) -> float: ...


Assemble = Callable[[onnx.ModelProto], bytes]  # a network graph → the whole file the measure reads (post, metadata)


def quantized_layers(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> list[str]:
    """The candidates for float, in graph order (see the module docstring, step 2)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    types = (set(QDQRegistry) | set(QLinearOpsRegistry)) - SCALE_SHARING_OPS
    dequantized = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.name for n in int8.graph.node if any(i in dequantized for i in n.input)}
    return [n.name for n in fp32.graph.node if n.name and n.op_type in types and n.name in quantized]


class OutputError:
    """Relative squared error of a network's outputs against fp32's on fixed batches, averaged over the outputs."""

    def __init__(self, fp32: onnx.ModelProto, batches: Sequence[np.ndarray]) -> None:
        self.batches = list(batches)
        self.reference = self._run(fp32)

    def _run(self, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
        from maedet.runtime import ort_session, run_session

        session = ort_session(model.SerializeToString(), what="a quantized candidate")
        return [run_session(session, batch) for batch in self.batches]

    def __call__(self, model: onnx.ModelProto) -> float:
        errors = []
        for outputs, reference in zip(self._run(model), self.reference, strict=True):
            for name, ref in reference.items():
                ref64 = ref.astype(np.float64)
                diff = outputs[name].astype(np.float64) - ref64
                errors.append(float((diff * diff).sum() / max(float((ref64 * ref64).sum()), 1e-30)))
        return float(np.mean(errors))


@contextlib.contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    """The tools' progress bar while INFO is shown (not with -q, not in library use without logging)."""
    if not logger.isEnabledFor(logging.INFO):
        yield lambda: None
        return
    from maedet.cli import progress_bar

    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def rank_layers(
    layers: Sequence[str], quantize: Callable[[Sequence[str]], onnx.ModelProto], error: Callable[[Any], float]
) -> list[tuple[str, float]]:
    """(layer, output-error reduction when it alone stays float), most sensitive first (graph order among ties)."""
    full = error(quantize(()))
    gains = []
    with _progress("ranking layers (output error)", len(layers)) as advance:
        for name in layers:
            gains.append((name, full - error(quantize((name,)))))
            advance()
    return sorted(gains, key=lambda item: -item[1])


@dataclass
class Selection:
    """The greedy search's outcome: the float layers (None when no prefix was within budget) and every try."""

    float_layers: list[str] | None
    score: float | None
    tried: list[tuple[int, float]] = field(default_factory=list)  # (layers in float, score)


def select_float_layers(
    ranked: Sequence[str],
    score_of: Callable[[Sequence[str]], float],
    reference: float,
    max_drop: float,
    limit: int | None = None,
) -> Selection:
    """A short prefix of ``ranked`` (at most ``limit`` layers) whose score is within ``max_drop`` of ``reference``.

    Each score is a full AP evaluation, so prefixes are not tried one after the other (a detector has some 200
    candidates, and where the error is spread over many layers the shortest prefix is long): 1, 2, 4, ... layers
    until one is within the budget (the whole list last), then bisection between that and the last that was not.
    When keeping more ranked layers in float never lowers the score, this is the shortest such prefix, found with
    at most about 2·log2(n) + 1 evaluations; otherwise it is a prefix within the budget, never one that was not
    measured."""
    count = len(ranked) if limit is None else min(limit, len(ranked))
    tried: list[tuple[int, float]] = []
    bound = 2 * max(1, math.ceil(math.log2(max(count, 1)))) + 1

    with _progress("keeping layers in float", bound) as advance:

        def within(k: int) -> bool:
            score = score_of(ranked[:k])
            tried.append((k, score))
            advance()
            logger.info("%d layer(s) in float: %.2f (drop %.2f)", k, score, reference - score)
            return reference - score <= max_drop

        failed, k = 0, 1
        while k <= count and not within(k):
            failed = k
            k = count if k < count < 2 * k else 2 * k
        if k > count:
            return Selection(None, None, tried)
        passed = k
        while passed - failed > 1:
            middle = (failed + passed) // 2
            if within(middle):
                passed = middle
            else:
                failed = middle
    score = next(value for k, value in reversed(tried) if k == passed)
    return Selection(list(ranked[:passed]), score, tried)


def ort_latency_ms(file: bytes, batch: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds of one run in ONNX Runtime CPU (after a short warm-up), through the runtime layer."""
    from maedet.runtime import OrtRunner, ort_session

    runner = OrtRunner(ort_session(file, what="the file being timed"), batch)
    try:
        for _ in range(LATENCY_WARMUP):
            runner()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner()
            times.append(time.perf_counter() - start)
    finally:
        runner.close()
    return 1000 * statistics.median(times)


@dataclass
class BudgetResult:
    """The budgeted network and what it keeps: the float layers, the scores and the latencies."""

    network: onnx.ModelProto
    measure: str
    max_drop: float
    fp32: float
    int8: float
    final: float
    float_layers: list[str]
    candidates: int
    sensitivity: dict[str, float]  # the kept layers' output-error reduction (empty when none is kept)
    latency_ms: dict[str, float]
    seconds: float

    @property
    def drop(self) -> float:
        return self.fp32 - self.final

    def metadata(self) -> dict[str, Any]:
        """The file's record of the search (``int8_float_layers``, ``int8_budget``)."""
        budget = {
            "measure": self.measure,
            "max_drop": self.max_drop,
            "fp32": round(self.fp32, 4),
            "int8": round(self.int8, 4),
            "final": round(self.final, 4),
            "drop": round(self.drop, 4),
            "candidates": self.candidates,
            "sensitivity": {name: float(f"{gain:.4g}") for name, gain in self.sensitivity.items()},
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "seconds": round(self.seconds, 1),
        }
        return {"int8_float_layers": list(self.float_layers), "int8_budget": budget}


class _Trials:
    """Quantize with some layers in float (calibration cached), assemble the file, score it with the measure."""

    def __init__(self, fp32: onnx.ModelProto, data: Sequence[np.ndarray], folder: Path, **options: Any) -> None:
        self.fp32, self.data, self.folder, self.options = fp32, data, folder, options
        self.count = 0

    def quantize(self, exclude: Sequence[str] = ()) -> onnx.ModelProto:
        cache = self.folder / "calibration.json"
        return quantize_int8(self.fp32, self.data, exclude_nodes=exclude, calibration_cache=cache, **self.options)

    def score(self, measure: AccuracyMeasure, file: bytes) -> float:
        self.count += 1
        path = self.folder / f"candidate-{self.count}.onnx"
        path.write_bytes(file)
        try:
            return float(measure(path))
        finally:
            path.unlink()


def _impossible(measure: str, max_drop: float, ref: float, full: float, selection: Selection) -> ExportError:
    best_k, best = max(selection.tried, key=lambda t: t[1]) if selection.tried else (0, full)
    return ExportError(
        f"no INT8 file keeps the {measure} drop within {max_drop:g} points with up to "
        f"{max((k for k, _ in selection.tried), default=0)} "
        f"layers in float (fp32 {ref:.2f}, full INT8 {full:.2f}, best {best:.2f} with {best_k} in float); allow a "
        "larger drop or more float layers (--max-float-layers); nothing was written."
    )


def _search(
    trials: _Trials, layers: list[str], measure: AccuracyMeasure, assemble: Assemble, scores: tuple[float, float],
    max_drop: float, limit: int | None,
) -> tuple[list[str], float, dict[str, float]]:  # fmt: skip
    """Rank the layers and keep the fewest in float (steps 4 and 5): (float layers, score, their sensitivity)."""
    ref, full_score = scores
    logger.info("%s drop %.2f > %g: ranking %d quantized layers", measure.name, ref - full_score, max_drop, len(layers))
    error = OutputError(trials.fp32, trials.data[: min(ERROR_BATCHES, len(trials.data))])
    ranking = rank_layers(layers, trials.quantize, error)
    logger.info("most sensitive: %s", ", ".join(f"{name} ({gain:.3g})" for name, gain in ranking[:3]))
    selection = select_float_layers(
        [name for name, _ in ranking],
        lambda names: trials.score(measure, assemble(trials.quantize(names))),
        ref, max_drop, limit,
    )  # fmt: skip
    if selection.float_layers is None or selection.score is None:
        raise _impossible(measure.name, max_drop, ref, full_score, selection)
    gains = dict(ranking)
    return selection.float_layers, selection.score, {name: gains[name] for name in selection.float_layers}


def budgeted_int8(
    fp32: onnx.ModelProto,
    data: Sequence[np.ndarray],
    *,
    measure: AccuracyMeasure,
    max_drop: float,
    assemble: Assemble,
    mode: str = "portable",
    per_channel: bool = True,
    max_float_layers: int | None = None,
) -> BudgetResult:
    """INT8 of the ``fp32`` network with the fewest layers in float whose file (``assemble``) scores within
    ``max_drop`` of the fp32 file's score (see the module docstring); ``data``: the calibration batches."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maedet-int8-budget-") as tmp:
        trials = _Trials(fp32, data, Path(tmp), mode=mode, per_channel=per_channel)
        full = trials.quantize()
        layers = quantized_layers(fp32, full)
        files = {"fp32": assemble(fp32), "int8": assemble(full)}
        ref, full_score = trials.score(measure, files["fp32"]), trials.score(measure, files["int8"])
        logger.info("%s: fp32 %.2f, full INT8 %.2f", measure.name, ref, full_score)
        if ref - full_score <= max_drop or max_float_layers == 0:
            if ref - full_score > max_drop:
                raise _impossible(measure.name, max_drop, ref, full_score, Selection(None, None))
            network, kept, final, sensitivity = full, [], full_score, {}
        else:
            kept, final, sensitivity = _search(
                trials, layers, measure, assemble, (ref, full_score), max_drop, max_float_layers
            )
            network = trials.quantize(kept)
        if kept:
            files["budgeted"] = assemble(network)
        latency = {name: ort_latency_ms(file, np.asarray(data[0])) for name, file in files.items()}
        latency.setdefault("budgeted", latency["int8"])  # no layer in float: the full INT8 file itself
    return BudgetResult(network, measure.name, max_drop, ref, full_score, final, kept,
                        len(layers), sensitivity, latency, time.perf_counter() - start)  # fmt: skip
