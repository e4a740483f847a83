"""pycocotools' COCOeval with its detection-to-ground-truth matching done per detection in numpy.

``COCOeval.evaluateImg`` matches greedily: for every IoU threshold and every detection (best score first) it walks
the ground truths of that image and category in a Python loop. That is IoU thresholds × detections × ground truths
Python steps per image, category and area range: an image with 750,000 boxes and 100 detections is 750 million
steps per category and area range, hours of work. Here the walk over ground truths is one numpy expression per
detection and threshold; everything else (IoUs, accumulation, the 12 numbers) is pycocotools' own.

The rule is exactly pycocotools': a detection takes, among the ground truths it may still take (unmatched, or a
crowd), the one of highest IoU at or above the threshold, the last such in pycocotools' order on a tie; a
non-ignored ground truth is always preferred to an ignored one. ``tests/test_detect.py`` compares the two on
random images with crowds, ignored boxes and tied IoUs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["LinearCOCOeval", "greedy_match"]


def _best(candidates: np.ndarray, ious_row: np.ndarray) -> int:
    """The index pycocotools' loop ends on among ``candidates``: highest IoU, the last one on a tie; -1 if none."""
    if not candidates.any():
        return -1
    masked = np.where(candidates, ious_row, -np.inf)
    last = len(masked) - 1 - int(np.argmax(masked[::-1]))
    return last


def greedy_match(
    ious: np.ndarray, thresholds: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, gt_ids: list, dt_ids: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gtm, dtm, dtIg)`` as ``COCOeval.evaluateImg`` computes them, for detections already in score order and
    ground truths with the ignored ones last (``ious`` is detections × ground truths)."""
    num_t, num_d, num_g = len(thresholds), len(dt_ids), len(gt_ids)
    gtm, dtm, dt_ig = np.zeros((num_t, num_g)), np.zeros((num_t, num_d)), np.zeros((num_t, num_d))
    if ious.size == 0:
        return gtm, dtm, dt_ig
    regular = gt_ignore == 0
    for t_index, threshold in enumerate(thresholds):
        limit = min(threshold, 1 - 1e-10)
        taken = np.zeros(num_g, dtype=bool)
        for d_index in range(num_d):
            row = ious[d_index]
            free = (~taken | crowd) & (row >= limit)
            match = _best(free & regular, row)
            if match < 0:
                match = _best(free & ~regular, row)
            if match < 0:
                continue
            dt_ig[t_index, d_index] = gt_ignore[match]
            dtm[t_index, d_index] = gt_ids[match]
            gtm[t_index, match] = dt_ids[d_index]
            taken[match] = True
    return gtm, dtm, dt_ig


def _columns(records: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {field: np.array([r[field] for r in records]) for field in fields}


class LinearCOCOeval(COCOeval):
    """COCOeval whose per-image matching is linear in the ground truths per detection (see the module docstring).

    The fields of an image and category's records are gathered into arrays once, not once per area range.
    """

    def evaluate(self) -> None:
        self._columns_cache: dict[tuple[Any, Any], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
        super().evaluate()
        self._columns_cache.clear()

    def _records(self, img_id: Any, cat_id: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        key = (img_id, cat_id)
        if key not in self._columns_cache:
            p = self.params
            cats = [cat_id] if p.useCats else p.catIds
            gt = [g for c in cats for g in self._gts[img_id, c]]
            dt = [d for c in cats for d in self._dts[img_id, c]]
            gts = _columns(gt, ("id", "area"))
            gts["ignore"] = np.array([bool(g["ignore"]) for g in gt], dtype=bool)
            gts["crowd"] = np.array([bool(int(g["iscrowd"])) for g in gt], dtype=bool)
            self._columns_cache[key] = (gts, _columns(dt, ("id", "area", "score")))
        return self._columns_cache[key]

    def evaluateImg(self, imgId: Any, catId: Any, aRng: list, maxDet: int) -> dict[str, Any] | None:
        gts, dts = self._records(imgId, catId)
        if not len(gts["id"]) and not len(dts["id"]):
            return None
        ignore = (gts["ignore"] | (gts["area"] < aRng[0]) | (gts["area"] > aRng[1])).astype(int)
        gtind = np.argsort(ignore, kind="mergesort")
        dtind = np.argsort(-dts["score"], kind="mergesort")[0:maxDet]
        computed = self.ious[imgId, catId]
        ious = computed[:, gtind] if len(computed) > 0 else np.zeros((0, 0))
        gt_ignore, gt_ids, dt_ids = ignore[gtind], gts["id"][gtind].tolist(), dts["id"][dtind].tolist()
        thresholds = np.asarray(self.params.iouThrs)
        gtm, dtm, dt_ig = greedy_match(ious, thresholds, gt_ignore, gts["crowd"][gtind], gt_ids, dt_ids)
        area = dts["area"][dtind]
        outside = ((area < aRng[0]) | (area > aRng[1])).reshape((1, len(dtind)))
        dt_ig = np.logical_or(dt_ig, np.logical_and(dtm == 0, np.repeat(outside, len(thresholds), 0)))
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": dt_ids,
            "gtIds": gt_ids,
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": dts["score"][dtind].tolist(),
            "gtIgnore": gt_ignore,
            "dtIgnore": dt_ig,
        }
