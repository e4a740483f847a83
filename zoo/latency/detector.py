"""Whole-detector latency from a profiled table: the FPN + GFocalV2 head and the postprocess, as operators.

A GFocalV2 detector (zoo/gfl.py) is the backbone, an FPN over its C3..C5 and a shared head over P3..P7, then
decoding and NMS. Its convolutions are the operator kinds a table already models (1×1 laterals, 3×3 outputs and
towers at stride 1, the extra levels' 3×3 at stride 2), so they are priced by the table's conv roles; what a
backbone never runs gets its own role, fitted by ``maedet-bench profile --detector`` (bench/profile_detector.py)
and stored in the table's ``detector`` section: ``gn`` (a tower's GroupNorm + ReLU), ``upadd`` (the FPN's
nearest upsample + add), ``headmisc`` (each level's softmax, top-k, quality, sigmoid and integral) and ``post``
(decoding, per-level top-k, NMS and the final top-k at the target's size; pieces.post_features). The neck and
head's sum is calibrated (a scale and an offset, like the backbone's) on whole detectors timed end to end.
Plain numpy; a table without the section answers a detector question with one sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from maedet.errors import MaeDetError

from ..structure import Structure, feature_levels
from .pieces import ELEMENTWISE_ROLES, FEATURE_NAMES, Op, op_features, out_size
from .table_numbers import BOUND, table_coefficients, table_number

__all__ = [
    "DETECTOR_ROLES",
    "DetectorHead",
    "DetectorLatency",
    "check_detector_section",
    "detector_widths",
    "genome_widths",
    "neck_head_ops",
    "no_detector_sentence",
    "post_op",
]

DETECTOR_ROLES = (*ELEMENTWISE_ROLES, "post")
PYRAMID = ("c3", "c4", "c5")


RESNET_DETECTORS = ("resnet50_gfl", "resnet101_gfl")  # GFocalV2 over ResNet-50/101: FPN 256, 4 stacked convs
RESNET_WIDTHS = (512, 1024, 2048)  # ResNet-50/101's C3..C5, what their FPN laterals read
# Upper bounds of a table's head, far past any published GFocalV2 (5 levels, 4 stacked convs, 256 wide, 16 bins):
# the levels and stacked convs set how many operators a prediction walks, the widths how large its numbers get.
HEAD_LIMITS = {
    "fpn_channels": 4096,
    "stacked_convs": 16,
    "cls_channels": 65536,
    "reg_max": 256,
    "reg_topk": 257,
    "reg_channels": 4096,
    "levels": 8,
}


@dataclass(frozen=True)
class DetectorHead:
    """The neck and head's shape (GFocalV2's arguments; the defaults are resnet50_gfl's and MAE-DET-M/L's)."""

    fpn_channels: int = 256
    stacked_convs: int = 4
    cls_channels: int = 81
    reg_max: int = 16
    reg_topk: int = 4
    reg_channels: int = 64
    levels: int = 5

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> DetectorHead:
        fields = set(cls.__dataclass_fields__)
        if set(data) - fields or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in data.values()
        ):
            raise MaeDetError(f"{where}: the detector's 'head' must hold positive integers among {sorted(fields)}.")
        head = cls(**{k: int(v) for k, v in data.items()})
        if head.levels < 3:
            raise MaeDetError(f"{where}: a GFocalV2 detector has at least 3 pyramid levels, got {head.levels}.")
        too_large = [f"{k} {v} (at most {HEAD_LIMITS[k]})" for k, v in head.to_dict().items() if v > HEAD_LIMITS[k]]
        if too_large:  # a shared table is untrusted data: its head's sizes set how long a prediction walks
            raise MaeDetError(f"{where}: the detector's 'head' is larger than any GFocalV2: {', '.join(too_large)}.")
        if head.reg_topk > head.reg_max + 1:
            raise MaeDetError(
                f"{where}: the detector's 'head' picks reg_topk {head.reg_topk} of only reg_max + 1 = "
                f"{head.reg_max + 1} distribution bins."
            )
        return head


def detector_widths(structure: Structure) -> tuple[int, int, int]:
    """The backbone's C3, C4, C5 widths: what the FPN's laterals read (the zoo's feature rule)."""
    chs = [b.out_chs for b in structure.blocks]
    levels = {name: i for name, i, _ in feature_levels([b.stride for b in structure.blocks])}
    return _pick(levels, chs)


def genome_widths(genome: Sequence[int], stem_stride: int, strides: Sequence[int]) -> tuple[int, int, int]:
    """:func:`detector_widths` of a search genome (stem width, then out/kernel/depth/bottleneck per stage)."""
    chs = [genome[0], *(genome[1 + 4 * j] for j in range(len(strides)))]
    levels = {name: i for name, i, _ in feature_levels([stem_stride, *strides])}
    return _pick(levels, chs)


def _pick(levels: Mapping[str, int], chs: Sequence[int]) -> tuple[int, int, int]:
    missing = [name for name in PYRAMID if name not in levels]
    if missing:
        raise MaeDetError(f"a GFocalV2 detector needs C3..C5 features; this backbone has no {', '.join(missing)}.")
    c3, c4, c5 = (chs[levels[name]] for name in PYRAMID)
    return c3, c4, c5


def level_sizes(input_size: int, levels: int) -> list[int]:
    """P3..P(levels+2) sides: C3 at stride 8, then halved (rounded up, as the padded convs round)."""
    sizes = [out_size(input_size, 8)]
    while len(sizes) < levels:
        sizes.append(out_size(sizes[-1], 2))
    return sizes


def neck_head_ops(widths: Sequence[int], head: DetectorHead, input_size: int) -> list[Op]:
    """Every operator of the FPN and the head for these C3..C5 widths at this input side, as zoo/gfl.py runs them."""
    f, sizes = head.fpn_channels, level_sizes(input_size, head.levels)
    ops = [Op("pw", c, f, 1, 1, s) for c, s in zip(widths, sizes, strict=False)]  # laterals
    ops += [Op("upadd", f, f, 1, 1, sizes[i]) for i in (1, 0)]  # top-down sums into P4, then P3
    ops += [Op("k3s1", f, f, 3, 1, s) for s in sizes[:3]]  # output convs
    ops += [Op("k3s2", f, f, 3, 2, s) for s in sizes[2 : head.levels - 1]]  # extra levels from P5's output
    bins = 4 * (head.reg_max + 1)
    for s in sizes:
        ops += [Op("k3s1", f, f, 3, 1, s), Op("gn", f, f, 1, 1, s)] * (2 * head.stacked_convs)  # both towers
        ops += [Op("k3s1", f, head.cls_channels, 3, 1, s), Op("k3s1", f, bins, 3, 1, s)]
        ops += [Op("pw", 4 * (head.reg_topk + 1), head.reg_channels, 1, 1, s), Op("pw", head.reg_channels, 1, 1, 1, s)]
        ops.append(Op("headmisc", bins, head.cls_channels, 1, 1, s))
    return ops


def post_op(head: DetectorHead, input_size: int) -> Op:
    """The postprocess as one operator (its features: pieces.post_features)."""
    return Op("post", head.cls_channels, head.cls_channels, head.levels, 1, input_size)


def no_detector_sentence(source: str) -> str:
    where = f"latency table {source!r}" if source else "the latency table"
    return (
        f"{where} has no detector section (it predicts backbones only); profile it again with "
        "maedet-bench profile --detector --out TABLE to add the FPN, head and postprocess."
    )


class DetectorLatency:
    """Predicted whole-detector ms per batch: the table's backbone + the neck and head + the postprocess."""

    def __init__(self, table: Any, section: Mapping[str, Any]) -> None:
        self.table = table
        self.section = section
        self.head = DetectorHead.from_dict(section.get("head") or {}, "the detector section")
        self._coefs = {r: np.asarray(c, dtype=np.float64) for r, c in section["roles"].items()}
        self._cache: dict[tuple[int, ...], float] = {}
        self._block = int(table.model.get("channel_block", 1))

    @property
    def references(self) -> dict[str, float]:
        """The whole detectors the profile measured (ms per batch)."""
        return dict(self.section.get("references") or {})

    def priced_references(self) -> dict[str, float]:
        """The measured detectors as relative budgets price them: a ResNet detector as its measured backbone (the
        table's reference) + this section's neck, head and postprocess at ResNet's C3..C5 widths, so a candidate
        and its reference carry the same neck-and-head error (measured at 640 px: a budget of ResNet-50 GFL's
        *measured* time let a search spend the neck and head's 4% under-prediction on a slower backbone); the
        others as measured."""
        priced = self.references
        for name in priced:
            backbone = self.table.references.get(name.removesuffix("_gfl"))
            if name in RESNET_DETECTORS and backbone:
                priced[name] = float(backbone) + self.head_and_post_ms(RESNET_WIDTHS)
        return priced

    def op_ms(self, op: Op) -> float:
        """A detector operator's ms: its own role's model, or the table's conv roles for a conv."""
        if op.role in DETECTOR_ROLES:
            coef = self._coefs.get(op.role)
            return 0.0 if coef is None else float(op_features(op, self.table.batch, self._block) @ coef)
        return float(self.table.op_ms(op))

    def raw_neck_head_ms(self, widths: Sequence[int]) -> float:
        return sum(self.op_ms(op) for op in neck_head_ops(widths, self.head, self.table.input_size))

    def neck_head_ms(self, widths: Sequence[int]) -> float:
        """The calibrated FPN + head for these C3..C5 widths (cached: the search asks for the same widths often)."""
        key = tuple(int(w) for w in widths)
        hit = self._cache.get(key)
        if hit is None:
            cal = self.section.get("calibration") or {}
            hit = float(cal.get("scale", 1.0)) * self.raw_neck_head_ms(key) + float(cal.get("offset_ms", 0.0))
            self._cache[key] = hit
        return hit

    def post_ms(self) -> float:
        return self.op_ms(post_op(self.head, self.table.input_size))

    def head_and_post_ms(self, widths: Sequence[int]) -> float:
        return self.neck_head_ms(widths) + self.post_ms()

    def predict(self, structure: Structure) -> dict[str, float]:
        """backbone_ms, neck_head_ms, postprocess_ms and total_ms per batch of the table's target."""
        backbone = float(self.table.predict_ms(structure))
        neck_head, post = self.neck_head_ms(detector_widths(structure)), self.post_ms()
        return {"backbone_ms": backbone, "neck_head_ms": neck_head, "postprocess_ms": post,
                "total_ms": backbone + neck_head + post}  # fmt: skip


def check_detector_section(section: Any, where: str) -> dict[str, Any]:
    """A table's ``detector`` section, checked (empty when absent: an older or backbone-only table)."""
    if section is None or section == {}:
        return {}
    if not isinstance(section, Mapping) or not isinstance(section.get("roles"), Mapping):
        raise MaeDetError(f"{where}: the 'detector' section must be an object with fitted 'roles'.")
    roles: dict[str, list[float]] = {}
    for role, coefs in section["roles"].items():
        if role not in DETECTOR_ROLES:
            raise MaeDetError(f"{where}: unknown detector role {role!r}; known: {', '.join(DETECTOR_ROLES)}.")
        roles[role] = table_coefficients(coefs, len(FEATURE_NAMES), f"{where}: the detector model of {role!r}")
    head = DetectorHead.from_dict(section.get("head") or {}, where).to_dict()
    calibration = section.get("calibration") or {}
    if not isinstance(calibration, Mapping) or not all(table_number(v) for v in calibration.values()):
        raise MaeDetError(f"{where}: the detector's 'calibration' must map names to finite numbers {BOUND}.")
    if not calibration.get("scale", 1.0) > 0:
        raise MaeDetError(
            f"{where}: the detector's calibration 'scale' must be positive, got {calibration['scale']!r}."
        )
    refs = section.get("references") or {}
    if not isinstance(refs, Mapping) or not all(table_number(v) and v > 0 for v in refs.values()):
        raise MaeDetError(f"{where}: the detector's 'references' must map names to positive ms {BOUND}.")
    checked = {"head": head, "roles": roles, "calibration": {k: float(v) for k, v in calibration.items()}}
    checked["references"] = {str(k): float(v) for k, v in refs.items()}
    return {**section, **checked}
