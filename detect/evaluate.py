"""COCO box AP of a detector on an annotated image set, with pycocotools' COCOeval (the official protocol).

Label ``i`` of the detector is the annotation file's ``i``-th category in id order (mmdetection's rule, which
for COCO gives the standard 80 ids), so the detector's class count must equal the file's category count.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError

from .backends import Backend
from .coco_file import read_coco
from .coco_match import LinearCOCOeval
from .run import ImageResult, detect_images

__all__ = ["STAT_NAMES", "CocoEval", "coco_box_ap", "detections_to_results", "evaluate", "load_annotations"]

logger = logging.getLogger(__name__)

LARGE_ANNOTATION_COUNT = 100_000  # from here on, matching takes long enough to say so (see coco_file)
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoEval:
    """The 12 COCOeval numbers (AP at IoU .50:.95 first), the image count and the detection count."""

    stats: dict[str, float]
    images: int
    detections: int


def _quiet() -> contextlib.AbstractContextManager[Any]:
    """pycocotools prints progress to stdout; the CLI keeps stdout for results."""
    return contextlib.redirect_stdout(io.StringIO())


def load_annotations(path: str | os.PathLike[str]) -> Any:
    """A pycocotools COCO object for an ``instances_*.json``; a bad file is one sentence (see :mod:`.coco_file`)."""
    if not Path(path).is_file():
        raise MaeDetError(f"annotation file {str(path)!r} does not exist.")
    coco = read_coco(path)
    if not coco.getImgIds() or not coco.getCatIds():
        raise MaeDetError(f"{str(path)!r} lists no images or no categories.")
    return coco


def detections_to_results(
    results: Sequence[ImageResult], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result records (``image_id``, ``category_id``, ``bbox`` as x, y, w, h, ``score``)."""
    records = []
    for res, image_id in zip(results, image_ids, strict=True):
        det = res.detections
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            records.append(
                {
                    "image_id": image_id,
                    "category_id": cat_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return records


def coco_box_ap(
    coco: Any, records: Sequence[dict[str, Any]], image_ids: Sequence[int] | None = None
) -> dict[str, float]:
    """COCOeval ``bbox`` over ``image_ids`` (default: all of the file's images); no detections gives zeros."""
    ids = list(image_ids) if image_ids is not None else coco.getImgIds()
    if not records:
        return dict.fromkeys(STAT_NAMES, 0.0)
    level = logging.INFO if len(coco.anns) >= LARGE_ANNOTATION_COUNT else logging.DEBUG
    logger.log(level, "matching %d detections with the annotations of %d images", len(records), len(ids))
    with _quiet():
        found = coco.loadRes(list(records))
        evaluator = LinearCOCOeval(coco, found, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}


def evaluate(
    backend: Backend,
    annotations: str | os.PathLike[str] | Any,
    images_dir: str | os.PathLike[str],
    *,
    scale: Sequence[int] | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CocoEval:
    """Run ``backend`` on every annotated image (or the first ``limit``) and score it with COCOeval.

    ``annotations``: a file, or the COCO object :func:`load_annotations` made of one (read before the model)."""
    coco = load_annotations(annotations) if isinstance(annotations, (str, os.PathLike)) else annotations
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) != backend.num_classes:
        raise MaeDetError(
            f"the annotations have {len(cat_ids)} categories but the detector has {backend.num_classes} classes."
        )
    image_ids = sorted(coco.getImgIds())[:limit]
    root = Path(images_dir)
    paths = [root / coco.imgs[i]["file_name"] for i in image_ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MaeDetError(f"{len(missing)} annotated images are not in {str(root)!r} (first: {missing[0]}).")
    if on_start is not None:
        on_start(len(paths))
    results = detect_images(paths, backend, scale=scale, batch_size=batch_size, on_batch=on_batch)
    records = detections_to_results(results, image_ids, cat_ids)
    return CocoEval(coco_box_ap(coco, records, image_ids), len(image_ids), len(records))
