"""Proof that an exported detector computes what PyTorch computes, in ONNX Runtime (CPU), or in OpenVINO (CPU)
for the IR made from the file.

Three comparisons, on the same images:

* raw: the network's per-level outputs, within the precision's tolerance (fp32: 1e-4 of each output's scale);
* detections: the whole file at its own thresholds vs the PyTorch model — same count per image, same labels,
  boxes within 1e-3 relative;
* probe: the postprocess graph traced again with score threshold 0, on PyTorch's raw outputs, so the NMS and
  top-k are compared on many detections even when the weights are untrained (few or no scores pass 0.05).

Only fp32 must give identical detections; for fp16 / INT8 the detection figures are reported, not required.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import PostprocessConfig

from .check import RUNTIMES, CheckReport, Tolerance, compare_outputs, run_file
from .detector_graph import DETECTION_OUTPUTS, INPUT_HW, NmsPostprocess, RawOutputs, postprocess_graph
from .onnx_export import INPUT_NAME

__all__ = [
    "BOX_REL_TOL",
    "EXIT_RULE",
    "MATCH_IOU",
    "DetectionComparison",
    "DetectorCheck",
    "check_detector",
    "compare_detections",
]

BOX_REL_TOL = 1e-3
MATCH_IOU = 0.9  # a lower-precision file's detection "matches" PyTorch's at this IoU and the same class
# The exit-code rule, said wherever a check is shown.
EXIT_RULE = (
    "exit 1 only when the raw outputs miss their tolerance or, for fp32, a detection differs; fp16 and INT8 "
    "detections are reported, not required, as a score near the threshold can tip a box in or out"
)


@dataclass
class DetectionComparison:
    """Per-batch agreement of two sets of padded detections."""

    images: int
    detections: int  # detections of the reference, all images together
    same_count: bool
    same_labels: bool
    max_box_rel: float  # max |a - b| / max(|b|, 1) over box coordinates
    max_score_abs: float
    matched: int = 0  # reference detections with a same-class detection at IoU ≥ MATCH_IOU (one each)
    matched_score_abs: float = 0.0  # max score difference over those pairs

    @property
    def passed(self) -> bool:
        return self.same_count and self.same_labels and self.max_box_rel <= BOX_REL_TOL

    def sentence(self, precision: str) -> str:
        """What differs, in words: how many detections match (IoU, class) and how far their scores are apart."""
        if self.detections == 0:
            return f"{precision}: PyTorch gives no detections on these images, so there are none to compare"
        scores = f"; their scores within {self.matched_score_abs:.3g}" if self.matched else ""
        return (
            f"{precision}: {self.matched} of {self.detections} detections match PyTorch's (IoU ≥ {MATCH_IOU}, same "
            f"class){scores}"
        )


@dataclass
class DetectorCheck:
    precision: str
    raw: CheckReport
    detections: DetectionComparison | None = None
    probe: DetectionComparison | None = None

    @property
    def passed(self) -> bool:
        if not self.raw.passed:
            return False
        if self.precision != "fp32":
            return True
        return all(c is None or c.passed for c in (self.detections, self.probe))

    def sentence(self) -> str:
        """The check in one sentence: what differs, whether it matters, and the exit-code rule."""
        if not self.raw.passed:
            verdict = f"the raw outputs miss their tolerance ({self.raw.tolerance}): the file is wrong"
        elif self.precision == "fp32":
            verdict = (
                "the file computes what PyTorch computes" if self.passed else "the detections differ from PyTorch's"
            )
        else:
            verdict = f"raw outputs within {self.raw.tolerance}"
        parts = [verdict] + [c.sentence(self.precision) for c in (self.detections,) if c is not None]
        if self.precision != "fp32" and self.raw.passed:
            parts.append(f"expected for {self.precision}")
        return f"{'; '.join(parts)} ({EXIT_RULE})."

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "passed": self.passed, "summary": self.sentence()}
        out["raw"] = self.raw.to_dict()
        for name in ("detections", "probe"):
            comparison = getattr(self, name)
            out[name] = None if comparison is None else {**asdict(comparison), "passed": comparison.passed}
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) x1y1x2y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def _match(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], b: int) -> tuple[int, float]:
    """Image ``b``: reference detections paired (greedily, best score first) with an unused same-class actual
    detection at IoU ≥ MATCH_IOU; returns the pairs' count and their largest score difference."""
    n, m = int(reference["num_dets"][b, 0]), int(actual["num_dets"][b, 0])
    if not n or not m:
        return 0, 0.0
    ious = _iou(reference["boxes"][b, :n].astype(np.float64), actual["boxes"][b, :m].astype(np.float64))
    ious[reference["labels"][b, :n, None] != actual["labels"][b, None, :m]] = 0.0
    used: set[int] = set()
    score_abs = 0.0
    for i in range(n):
        order = [j for j in np.argsort(-ious[i]) if j not in used and ious[i, j] >= MATCH_IOU]
        if order:
            used.add(int(order[0]))
            score_abs = max(score_abs, abs(float(actual["scores"][b, order[0]]) - float(reference["scores"][b, i])))
    return len(used), score_abs


def compare_detections(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> DetectionComparison:
    """Compare ``num_dets``/``boxes``/``scores``/``labels`` image by image, over the valid slots."""
    same_count = same_labels = True
    box_rel = score_abs = matched_score = 0.0
    total = matched = 0
    for b in range(reference["num_dets"].shape[0]):
        pairs, pair_score = _match(reference, actual, b)
        matched, matched_score = matched + pairs, max(matched_score, pair_score)
        n = int(reference["num_dets"][b, 0])
        total += n
        if int(actual["num_dets"][b, 0]) != n:
            same_count = False
            n = min(n, int(actual["num_dets"][b, 0]))
        if not np.array_equal(reference["labels"][b, :n], actual["labels"][b, :n]):
            same_labels = False
        if n:
            ref_boxes = reference["boxes"][b, :n].astype(np.float64)
            diff = np.abs(actual["boxes"][b, :n] - ref_boxes) / np.maximum(np.abs(ref_boxes), 1.0)
            box_rel = max(box_rel, float(diff.max()))
            score_abs = max(score_abs, float(np.abs(actual["scores"][b, :n] - reference["scores"][b, :n]).max()))
    images = reference["num_dets"].shape[0]
    return DetectionComparison(images, total, same_count, same_labels, box_rel, score_abs, matched, matched_score)


@torch.no_grad()
def _postprocess(detector: GFocalV2, cfg: PostprocessConfig, raw: list[torch.Tensor]) -> dict[str, np.ndarray]:
    outs = NmsPostprocess(detector.strides, detector.num_classes, cfg)(*raw)
    return {name: o.numpy() for name, o in zip(DETECTION_OUTPUTS, outs, strict=True)}


def check_detector(
    detector: GFocalV2,
    cfg: PostprocessConfig,
    file_bytes: bytes,
    network_bytes: bytes,
    images: torch.Tensor,
    precision: str,
    nms: bool,
    tolerance: Tolerance | None = None,
    runtime: str = "onnxruntime",
) -> DetectorCheck:
    """Run the three comparisons (see the module docstring) in ``runtime``; ``images`` as the file takes them."""
    with torch.no_grad():
        raw = list(RawOutputs(detector, images.dtype == torch.uint8, with_input_hw=True)(images))
    names = detector.output_names
    reference = {n: t.numpy() for n, t in zip(names, raw, strict=False)}
    feed = {INPUT_NAME: images.numpy()}
    network = run_file(network_bytes, feed, "the exported network", runtime)
    report = compare_outputs(
        reference,
        {n: network[n] for n in names},
        precision,
        input_shape=tuple(images.shape),
        providers=[RUNTIMES[runtime]],
        tolerance=tolerance,
    )
    result = DetectorCheck(precision, report)
    if not nms:
        return result
    whole = run_file(file_bytes, feed, "the exported detector", runtime)
    result.detections = compare_detections(_postprocess(detector, cfg, raw), whole)
    probe_cfg = replace(cfg, score_thr=0.0)
    opset = max(o.version for o in _opsets(network_bytes) if o.domain in ("", "ai.onnx"))
    probe_graph = postprocess_graph(detector, raw, probe_cfg, dynamic=False, opset=opset)
    feeds = {n: t.numpy() for n, t in zip([*names, INPUT_HW], raw, strict=True)}
    probe = run_file(probe_graph.SerializeToString(), feeds, "the postprocess probe", runtime)
    result.probe = compare_detections(_postprocess(detector, probe_cfg, raw), probe)
    return result


def _opsets(model_bytes: bytes) -> list[Any]:
    import onnx

    return list(onnx.load_from_string(model_bytes).opset_import)
