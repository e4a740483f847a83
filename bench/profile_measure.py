"""What a latency profile measures, and how: networks and pieces timed in real sessions, each against an anchor.

Two measured facts shape this module (docs/latency.md):

* A piece timed on its own is not what the runtime runs inside a network: ONNX Runtime CPU adds layout reorders at
  the graph's edges and, when a block's input is the graph input, leaves the residual add and ReLU unfused (20% of a
  small block). So on ONNX Runtime CPU the operators are timed *inside* whole networks, by the runtime's own
  profiler (per-node kernel times), and each node is attributed to the block operator it computes by its name.
  GPU runtimes run kernels asynchronously (their per-node times are launch times), so there the pieces are timed
  on their own.
* On a shared machine, slow phases of seconds to minutes slow every run by up to 2×. Every unit is timed in
  interleaved rounds together with a fixed *anchor* network (MAE-DET-S at half the input size), and each round is
  scaled by the anchor's quiet time over its time in that round (:func:`steady_ms`).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import Piece, piece_ops, structure_pieces

from .timing import choose_iterations, run_interleaved, time_call

__all__ = [
    "ANCHOR",
    "Measurer",
    "Timing",
    "attribute_node",
    "ov_node_times",
    "piece_module",
    "piece_seed",
    "quiet_anchor_ms",
    "run_node_times",
    "steady_ms",
    "structure_op_keys",
]

ANCHOR = "maedet_s"  # timed beside every unit, at half the target's input size
ANCHOR_QUANTILE = 25  # the anchor's quiet time: this percentile of all its rounds
_BLOCK_NODE = re.compile(r"/stages_(\d+)/blocks/blocks\.(\d+)/(?:(conv1|conv2|conv3|downsample|shortcut)/)?")
_STEM_NODE = re.compile(r"/stem/")


@dataclass
class Timing:
    """Per-round ms of one unit and of the anchor in the same rounds; per-round ms of its operators if profiled."""

    times: list[float]
    anchor: list[float]
    ops: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"times": self.times, "anchor": self.anchor}
        return data | ({"ops": self.ops} if self.ops else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        ops = {str(k): [float(x) for x in v] for k, v in (data.get("ops") or {}).items()}
        return cls([float(x) for x in data["times"]], [float(x) for x in data["anchor"]], ops)


def quiet_anchor_ms(units: Mapping[str, Timing]) -> float:
    """The anchor's quiet time over a run: a low percentile (ANCHOR_QUANTILE) of every anchor round of ``units``."""
    return float(np.percentile([a for t in units.values() for a in t.anchor], ANCHOR_QUANTILE))


def steady_ms(times: Sequence[float], anchor: Sequence[float], reference: float) -> float:
    """Median over rounds of each round's time scaled by ``reference`` / the anchor's time in that round."""
    return float(statistics.median(t * reference / a for t, a in zip(times, anchor, strict=True)))


# ------------------------------------------------------------------------------------------- node attribution
def structure_op_keys(structure: Structure, input_size: int) -> dict[str, Any]:
    """Every operator of a structure by the key its profiled node times are summed under: ``stem`` and
    ``s{stage}.b{block}.{place}`` (place: conv1, conv2, conv3, downsample, shortcut, add)."""
    ops: dict[str, Any] = {}
    stage_pieces = iter(structure_pieces(structure, input_size))
    stem, _ = next(stage_pieces)
    ops["stem"] = piece_ops(stem)["stem"]
    for j, st in enumerate(structure.stages):
        first, _ = next(stage_pieces)
        rest = next(stage_pieces)[0] if st.depth > 1 else None
        for i in range(st.depth):
            for place, op in piece_ops(first if i == 0 else rest).items():  # type: ignore[arg-type]
                ops[f"s{j}.b{i}.{place}"] = op
    return ops


def attribute_node(name: str) -> str | None:
    """The operator key a profiled node belongs to, from the module path the exporter writes into node names
    (``/inner/stages_2/blocks/blocks.0/conv2/act/Relu_output_0_nchwc`` → ``s2.b0.conv2``); a node of a block
    outside its convs and pool (an unfused residual add or ReLU) counts as the block's ``add``; None if neither."""
    match = _BLOCK_NODE.search(name)
    if match is not None:
        return f"s{match.group(1)}.b{match.group(2)}.{match.group(3) or 'add'}"
    return "stem" if _STEM_NODE.search(name) else None


def run_node_times(
    profile_file: str | Path, runs: int, attribute: Callable[[str], str | None] = attribute_node
) -> list[dict[str, float]]:
    """Per run (the last ``runs`` model runs of an ONNX Runtime profile), the kernel ms summed per operator key
    (``attribute`` names a node's key, or None for a node that counts for none)."""
    events = json.loads(Path(profile_file).read_text())
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )[-runs:]
    if len(spans) != runs:
        raise RuntimeError(f"the runtime profile holds {len(spans)} runs, expected {runs}")
    per_run: list[dict[str, float]] = [{} for _ in spans]
    starts = [s for s, _ in spans]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        key = attribute(e["name"])
        r = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if key is not None and r >= 0 and e["ts"] <= spans[r][1]:
            per_run[r][key] = per_run[r].get(key, 0.0) + e["dur"] / 1000.0
    return per_run


def ov_node_times(
    profiles: Sequence[Sequence[Any]], runs: int, attribute: Callable[[str], str | None] = attribute_node
) -> list[dict[str, float]]:
    """Per run (the last ``runs`` of an OpenVINO runner's kept profiles), the executed nodes' ms summed per operator
    key. OpenVINO names a fused node after the ONNX node it grew from, so the same attribution holds."""
    if len(profiles) < runs:
        raise RuntimeError(f"the runtime profile holds {len(profiles)} runs, expected {runs}")
    per_run: list[dict[str, float]] = []
    for infos in profiles[-runs:]:
        times: dict[str, float] = {}
        for info in infos:
            key = attribute(info.node_name)
            if key is not None and str(info.status).endswith("EXECUTED"):
                times[key] = times.get(key, 0.0) + info.real_time.total_seconds() * 1000.0
        per_run.append(times)
    return per_run


# ------------------------------------------------------------------------------------------- sessions
class Measurer:
    """Builds the runnables of one target (exported with the exporter's path, run through the runtime layer) and
    times them against the anchor."""

    def __init__(self, settings: Any, workdir: str | Path) -> None:
        self.settings = settings
        self.workdir = Path(workdir)
        anchor_size = max(32, settings.input_size // 2)
        self._anchor = self._network_runner(builtin_structure(ANCHOR), anchor_size)

    # ---------------------------------------------------------------- building
    def _to_onnx(self, module: Any, shape: Sequence[int], output_names: Sequence[str]) -> bytes:
        import torch

        from maedet.export.onnx_export import torch_to_onnx
        from maedet.zoo import fuse_bn

        example = torch.rand(*shape)
        proto = torch_to_onnx(fuse_bn(module.eval()), example, output_names, dynamic=False, opset=self.settings.opset)
        if self.settings.precision == "int8":
            from maedet.export.precision import quantize_int8

            calib = [np.random.default_rng(0).random(tuple(shape), dtype=np.float32)]
            proto = quantize_int8(proto, calib, mode="cpu")
        return proto.SerializeToString()

    def _runner(self, model: bytes, shape: Sequence[int], profile_prefix: Path | None = None) -> Any:
        from maedet.runtime import OrtRunner, ort_providers, ort_session

        s = self.settings
        images = np.random.default_rng(1).random(tuple(shape), dtype=np.float32)
        if s.backend == "ov-cpu":  # as the bench's ov-cpu rows: the same threads and denormal setting as ort-cpu
            from maedet.openvino_runtime import OvRunner, ov_compile

            profiled = profile_prefix is not None
            compiled = ov_compile(
                model, threads=s.thread_count, denormals_as_zero=True, profile=profiled, what="a profiled network"
            )
            return OvRunner(compiled, images, keep_profiles=profiled)
        provider = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider"}.get(
            s.backend, "TensorrtExecutionProvider"
        )
        session = ort_session(
            model,
            providers=ort_providers(provider),
            threads=s.thread_count,
            denormals_as_zero=True,
            profile_prefix=profile_prefix,
            what="a profiled network",
        )
        return OrtRunner(session, images, device="cpu" if s.backend == "ort-cpu" else "cuda")

    def _network_runner(self, structure: Structure | str, size: int, profile_prefix: Path | None = None) -> Any:
        """A whole backbone as the bench times it: deploy form, C2..C5 outputs."""
        from maedet.export.model_source import resolve_model

        if isinstance(structure, str):
            source = resolve_model(structure)
        else:
            source = resolve_model("maedet", structure=structure)
        shape = (self.settings.batch, 3, size, size)
        return self._runner(self._to_onnx(source.module, shape, source.output_names), shape, profile_prefix)

    def _piece_runner(self, piece: Piece) -> Any:
        module = piece_module(piece)
        shape = (self.settings.batch, piece.in_chs, piece.size, piece.size)
        return self._runner(self._to_onnx(module, shape, ["y"]), shape)

    # ---------------------------------------------------------------- timing
    def network(self, structure: Structure | str, *, profiled: bool = False) -> Timing:
        """One network in rounds beside the anchor; with ``profiled``, its operators' kernel times per round."""
        prefix = self.workdir / "ort-profile" if profiled else None
        return self.timed(self._network_runner(structure, self.settings.input_size, prefix), profiled)

    def timed(self, runner: Any, profiled: bool, attribute: Callable[[str], str | None] = attribute_node) -> Timing:
        """A built runner in rounds beside the anchor (closed after); with ``profiled`` (its session profiling),
        the kernel times per round summed by ``attribute``'s keys."""
        rounds = self.settings.rounds
        runner()  # warm-up: the first run allocates
        self._anchor()
        times = run_interleaved({"unit": runner, "anchor": self._anchor}, {}, max_rounds=rounds, min_rounds=rounds)
        timing = Timing(_ms(times["unit"]), _ms(times["anchor"]))
        if profiled:
            per_run = self._node_times(runner, rounds, attribute)
            keys = sorted({k for run in per_run for k in run})
            timing.ops = {k: [run.get(k, 0.0) for run in per_run] for k in keys}
        runner.close()
        return timing

    @staticmethod
    def _node_times(
        runner: Any, rounds: int, attribute: Callable[[str], str | None] = attribute_node
    ) -> list[dict[str, float]]:
        """Per run, the profiled kernel ms per operator key: ONNX Runtime's profile file, or OpenVINO's counters."""
        if hasattr(runner, "profiles"):
            return ov_node_times(runner.profiles, rounds, attribute)
        profile_file = Path(runner.session.end_profiling())
        try:
            return run_node_times(profile_file, rounds, attribute)
        finally:
            profile_file.unlink(missing_ok=True)

    def pieces(self, pieces: Sequence[Piece]) -> dict[str, Timing]:
        """Pieces on their own (GPU runtimes), in interleaved rounds with the anchor; per round, each one's median."""
        runners: dict[str, Callable[[], object]] = {p.key(): self._piece_runner(p) for p in pieces}
        runners["anchor"] = self._anchor
        iterations = {}
        for key, fn in runners.items():
            fn()
            iterations[key] = choose_iterations(time_call(fn), target_round_s=0.05, cap=20)
        rounds = self.settings.rounds
        times = run_interleaved(runners, iterations, max_rounds=rounds, min_rounds=rounds)
        per_round = {k: _round_medians(_ms(v), iterations[k]) for k, v in times.items()}
        anchor = per_round.pop("anchor")
        return {k: Timing(v, anchor) for k, v in per_round.items()}


def _ms(seconds: Sequence[float]) -> list[float]:
    return [s * 1000.0 for s in seconds]


def _round_medians(values: list[float], per_round: int) -> list[float]:
    return [float(statistics.median(values[i : i + per_round])) for i in range(0, len(values), per_round)]


def piece_seed(piece: Piece) -> int:
    """The seed of a piece's weights: SHA-256 of its key, so every process times the same weights (``hash()`` of a
    string changes with each process's PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(piece.key().encode("ascii")).digest()[:8], "little")


def piece_module(piece: Piece) -> Any:
    """The piece as zoo/maedet.py builds it, with weights and BN statistics drawn from :func:`piece_seed`."""
    import torch

    from maedet.zoo.maedet import Bottleneck, ConvBnAct

    seed = piece_seed(piece)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if piece.kind == "stem":
            module = ConvBnAct(piece.in_chs, piece.out_chs, piece.kernel_size, piece.stride)
        else:
            first = piece.kind == "first"
            module = Bottleneck(
                piece.in_chs, piece.out_chs, piece.bottleneck_chs, piece.kernel_size, piece.stride, project=first
            )
    _randomize_bn(module, seed)
    return module


def _randomize_bn(module: Any, seed: int) -> None:
    """Plausible BN statistics, so a folded conv has realistic weights (zero-init would make INT8 trivial)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var.data = torch.rand(m.num_features, generator=gen) + 0.5
