"""Predicted peak memory of a whole GFocalV2 detector on ONNX Runtime CPU: the backbone's features, extended by the
FPN, the head and the postprocess.

A detector is exported as the bench runs it (bench/detectors.py's deploy form, NMS in the graph), so its session
converts the backbone's weights, then the FPN's and the head's, in the order the exported model lists them, and its
run walks the backbone, the FPN and the head level by level before decoding and NMS. The features are the
backbone's (zoo/latency/memory.py) computed over that whole graph:

* the initializers in the exported detector's order: the backbone's blocks' convs in order, then the FPN's
  laterals, output and extra convs and the head's two towers (shared by every level), its class and box convs and
  the quality branch, then the backbone's other last 1×1s (read from exported detectors; the biases the exporter
  lists elsewhere are a few KiB);
* the activations in execution order: the backbone without its stage outputs (C3..C5 feed the laterals directly),
  the FPN (laterals, the top-down upsample + add, output convs, extra levels), then per level the box tower and its
  distribution, the class tower, the joint score and the distances (both held until the postprocess reads them),
  then per level the padded class scores the postprocess ranks and the candidates it keeps.

The same two phases are fitted on measured detectors (``maedet-bench profile --memory T --detector``) and stored in
the table's ``memory`` section under ``detector`` with the head they predict for (the search's: FPN 256, 4
stacked convs).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from maedet.errors import MaeDetError

from ..structure import Structure, feature_levels
from .detector import DetectorHead, detector_widths, level_sizes
from .memory import (
    FLOAT_BYTES,
    MemoryModel,
    Tensor,
    _up,
    activation_features,
    activation_peak_bytes,
    check_memory_section,
    initializer_parts,
    network_tensors,
    weight_features,
)

__all__ = [
    "DetectorMemoryModel",
    "check_table_memory",
    "detector_initializer_bytes",
    "detector_memory_features",
    "detector_tensors",
    "neck_head_initializer_bytes",
    "neck_head_tensors",
    "table_detector_memory_model",
]

NMS_PRE = 1000  # candidates per level the postprocess keeps (zoo/gfl_postprocess.py's default)
INDEX_BYTES = 8  # top-k indices are int64


def neck_head_initializer_bytes(widths: Sequence[int], head: DetectorHead) -> list[int]:
    """fp32 bytes of the FPN's and the head's weights (with their biases and GroupNorm scales) in exported order."""
    f, bins = head.fpn_channels, 4 * (head.reg_max + 1)
    sizes = [f * (c + 1) for c in widths]  # laterals
    sizes += [f * (f * 9 + 1)] * (len(widths) + head.levels - 3)  # output convs, then the extra levels
    # class and box towers: a conv without bias, then GroupNorm's scale, shift and one more per-channel constant
    sizes += [f * f * 9 + 3 * f] * (2 * head.stacked_convs)
    sizes += [head.cls_channels * (f * 9 + 1), bins * (f * 9 + 1)]  # class and box convs
    sizes += [head.reg_channels * (4 * (head.reg_topk + 1) + 1), head.reg_channels + 1]  # quality branch
    sizes += [head.levels, head.reg_max + 1]  # per-level scales, the integral's projection
    return [n * FLOAT_BYTES for n in sizes]


def detector_initializer_bytes(structure: Structure, head: DetectorHead, widths: Sequence[int]) -> list[int]:
    """The whole detector's initializers in the exported order (module docstring)."""
    ahead, behind = initializer_parts(structure)
    return ahead + neck_head_initializer_bytes(widths, head) + behind


def _pyramid_inputs(structure: Structure) -> list[str]:
    """The backbone tensors the FPN's laterals read: the last block of the stages giving C3, C4, C5."""
    levels = {name: i for name, i, _ in feature_levels([b.stride for b in structure.blocks])}
    missing = [n for n in ("c3", "c4", "c5") if n not in levels]
    if missing:
        raise MaeDetError(f"a GFocalV2 detector needs C3..C5 features; this backbone has no {', '.join(missing)}.")
    stages = structure.stages
    return [f"s{levels[n] - 1}.b{stages[levels[n] - 1].depth - 1}.out" for n in ("c3", "c4", "c5")]


def detector_tensors(
    structure: Structure, head: DetectorHead, input_size: int, batch: int = 1, channel_block: int = 1
) -> list[Tensor]:
    """Every activation of the exported detector in execution order (the graph input excluded)."""
    backbone = [t for t in network_tensors(structure, input_size, batch, channel_block) if not t.output]
    return backbone + neck_head_tensors(_pyramid_inputs(structure), head, input_size, batch, channel_block)


def neck_head_tensors(
    pyramid: Sequence[str], head: DetectorHead, input_size: int, batch: int = 1, channel_block: int = 1
) -> list[Tensor]:
    """The FPN's, the head's and the postprocess's activations in execution order, after the backbone tensors
    named ``pyramid`` (C3, C4, C5)."""
    tensors: list[Tensor] = []
    f, sizes = head.fpn_channels, level_sizes(input_size, head.levels)

    def add(name: str, channels: int, side: int, *reads: str, block: int = channel_block, width: int = 4) -> str:
        tensors.append(Tensor(name, batch * _up(channels, block) * side * side * width, reads))
        return name

    laterals = [add(f"lat{i}", f, sizes[i], c) for i, c in enumerate(pyramid)]
    for i in (1, 0):  # top-down: the coarser level upsampled and added
        up = add(f"up{i}", f, sizes[i], laterals[i + 1])
        laterals[i] = add(f"sum{i}", f, sizes[i], laterals[i], up)
    levels = [add(f"P{i + 3}", f, sizes[i], x) for i, x in enumerate(laterals)]
    for i in range(3, head.levels):
        levels.append(add(f"P{i + 3}", f, sizes[i], levels[-1]))
    bins, results = 4 * (head.reg_max + 1), []
    for i, (x, s) in enumerate(zip(levels, sizes, strict=True)):

        def tower(kind: str, x: str = x, i: int = i, s: int = s) -> str:
            for j in range(head.stacked_convs):
                conv = add(f"{kind}{i}.{j}.conv", f, s, x)
                norm = add(f"{kind}{i}.{j}.norm", f, s, conv, block=1)
                x = add(f"{kind}{i}.{j}.act", f, s, norm, block=1)
            return x

        logits = add(f"scale{i}", bins, s, add(f"reg_out{i}", bins, s, tower("reg"), block=1), block=1)
        prob = add(f"prob{i}", bins, s, logits, block=1)
        cls = add(f"cls_sig{i}", head.cls_channels, s, add(f"cls_out{i}", head.cls_channels, s, tower("cls"), block=1))
        top = add(f"topk{i}", 4 * head.reg_topk, s, prob, block=1)
        add(f"topk_index{i}", 4 * head.reg_topk, s, prob, block=1, width=INDEX_BYTES)
        stat = add(f"stat{i}", 4 * (head.reg_topk + 1), s, top, add(f"mean{i}", 4, s, top, block=1), block=1)
        hidden = add(f"fc1_{i}", head.reg_channels, s, stat, block=1)
        quality = add(f"quality{i}", 1, s, hidden, block=1)
        scores = add(f"scores{i}", head.cls_channels - 1, s, cls, quality, block=1)
        projected = add(f"projected{i}", bins, s, prob, block=1)
        distances = add(f"distances{i}", 4, s, add(f"integral{i}", 4, s, projected, block=1), block=1)
        results.append((scores, distances, s))
    return tensors + _postprocess_tensors(results, head, batch)


def _postprocess_tensors(results: list[tuple[str, str, int]], head: DetectorHead, batch: int) -> list[Tensor]:
    """Per level the class scores transposed and padded with NMS_PRE rows, their best class, the kept candidates'
    scores and boxes; then the candidates of every level together, which NMS reads."""
    classes, tensors, kept = head.cls_channels - 1, [], []
    for i, (scores, distances, s) in enumerate(results):
        rows = s * s + NMS_PRE
        padded = Tensor(f"post.padded{i}", batch * rows * classes * FLOAT_BYTES, (scores,))
        best = Tensor(f"post.best{i}", batch * rows * FLOAT_BYTES, (padded.name,))
        cand = Tensor(f"post.cand{i}", batch * NMS_PRE * classes * FLOAT_BYTES, (padded.name, best.name))
        boxes = Tensor(f"post.boxes{i}", batch * NMS_PRE * 4 * FLOAT_BYTES, (distances, best.name))
        tensors += [padded, best, cand, boxes]
        kept += [cand.name, boxes.name]
    n = len(results) * NMS_PRE
    tensors.append(Tensor("post.candidates", batch * n * (classes + 4) * FLOAT_BYTES, tuple(kept)))
    return tensors


def detector_memory_features(
    structure: Structure, head: DetectorHead, input_size: int, batch: int, channel_block: int
) -> dict[str, float]:
    """The memory FEATURES (zoo/latency/memory.py) of the whole detector over this backbone."""
    in_order = detector_initializer_bytes(structure, head, detector_widths(structure))
    peak, largest = _split_activations(structure, head, input_size, batch, channel_block)
    return weight_features(in_order) | activation_features(peak, largest)


def _split_activations(
    structure: Structure, head: DetectorHead, input_size: int, batch: int, channel_block: int
) -> tuple[int, int]:
    """The activation peak and the largest activation of the whole detector, walked in two parts: the backbone
    with its C3..C5 held to its end, then the neck, head and postprocess from those three alone (what is alive when
    the backbone ends). The second part depends only on the three tensors' bytes, so it is cached: the search asks
    for thousands of backbones and few distinct pyramids."""
    pyramid = _pyramid_inputs(structure)
    kept = set(pyramid)
    backbone = [
        Tensor(t.name, t.nbytes, t.reads, output=t.name in kept)
        for t in network_tensors(structure, input_size, batch, channel_block)
        if not t.output
    ]
    nbytes = {t.name: t.nbytes for t in backbone}
    tail_peak, tail_largest = _tail_activations(
        tuple(nbytes[n] for n in pyramid), head, input_size, batch, channel_block
    )
    largest = max(t.nbytes for t in backbone)
    return max(activation_peak_bytes(backbone), tail_peak), max(largest, tail_largest)


@functools.lru_cache(maxsize=4096)
def _tail_activations(
    pyramid_bytes: tuple[int, ...], head: DetectorHead, input_size: int, batch: int, channel_block: int
) -> tuple[int, int]:
    names = ("c3", "c4", "c5")
    start = [Tensor(n, b, ()) for n, b in zip(names, pyramid_bytes, strict=True)]
    tail = neck_head_tensors(names, head, input_size, batch, channel_block)
    return activation_peak_bytes(start + tail), max(t.nbytes for t in tail)


@dataclass(frozen=True)
class DetectorMemoryModel(MemoryModel):
    """A memory model of whole detectors with this ``head`` over the backbone it is asked about."""

    head: DetectorHead = field(default_factory=DetectorHead)
    what: ClassVar[str] = "detector memory"

    def features(self, structure: Structure) -> dict[str, float]:
        return detector_memory_features(structure, self.head, self.input_size, self.batch, self.channel_block)

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"head": self.head.to_dict()}

    @classmethod
    def from_detector_section(cls, section: Any, batch: int, input_size: int, where: str) -> DetectorMemoryModel:
        """The memory section's ``detector`` part, checked; anything wrong is one sentence."""
        if not isinstance(section, Mapping):
            raise MaeDetError(f"{where}: the memory model's 'detector' part must be an object.")
        base = MemoryModel.from_section(section, batch, input_size, f"{where} (detector)")
        head = DetectorHead.from_dict(section.get("head") or {}, f"{where} (detector memory)")
        return cls(
            base.phases, batch, input_size, base.channel_block, base.validation, base.malloc_mmap_threshold, head
        )


def table_detector_memory_model(table: Any, where: str) -> DetectorMemoryModel:
    """The whole-detector memory model a latency table carries, or one sentence saying how to add one."""
    section = getattr(table, "memory", None) or {}
    detector = section.get("detector") if isinstance(section, Mapping) else None
    if not detector:
        raise MaeDetError(
            f"{where} has no detector memory model; fit one with 'maedet-bench profile --memory TABLE --detector' "
            "before asking for a detector's memory."
        )
    return DetectorMemoryModel.from_detector_section(detector, int(table.batch), int(table.input_size), where)


def check_table_memory(section: Any, where: str) -> dict[str, Any]:
    """A table's whole ``memory`` section, checked when the table loads: the backbones' model and, when present,
    the whole detectors' beside it (empty when absent)."""
    checked = check_memory_section(section, where)
    if checked.get("detector") is not None:
        DetectorMemoryModel.from_detector_section(checked["detector"], 1, 1, where)
    return checked
