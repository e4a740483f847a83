"""Ground truth without annotations: PyTorch fp32's own confident detections on the images.

For users with weights and images but no labels. Every detection of the PyTorch fp32 model scoring at least
``threshold`` (default :data:`PSEUDO_LABEL_THRESHOLD`, 0.3) becomes a ground-truth box of its class; the other
formats are then scored against those boxes with COCOeval. The figures measure how well a format agrees with
PyTorch fp32, not how accurate it is: PyTorch fp32 itself scores AP 1.0 (its detections above the threshold are
the ground truth, the ones below come after all of them in score order), and a format that moves boxes, drops
objects or invents new confident ones scores less.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maedet.detect import Backend, detect_images
from maedet.detect.coco import class_names
from maedet.detect.evaluate import detections_to_results
from maedet.export.precision import IMAGE_SUFFIXES
from maedet.letterbox import TEST_SCALE

from .errors import BenchError

__all__ = ["PSEUDO_LABEL_THRESHOLD", "check_threshold", "folder_images", "pseudo_label_coco"]

PSEUDO_LABEL_THRESHOLD = 0.3  # confident enough to count as an object, low enough to keep most true ones


def folder_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in ``folder``, by name; one sentence when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise BenchError(f"image folder {str(root)!r} does not exist or is not a folder.")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BenchError(f"image folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def check_threshold(threshold: float) -> None:
    """A score threshold strictly between 0 and 1, or one sentence (checked before any model loads)."""
    if not 0.0 < threshold < 1.0:
        raise BenchError(f"the pseudo-label score threshold must be between 0 and 1, got {threshold}.")


def pseudo_label_coco(
    reference: Backend,
    images: str | os.PathLike[str],
    threshold: float = PSEUDO_LABEL_THRESHOLD,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> Any:
    """A pycocotools COCO object (built in memory) whose ground truth is ``reference``'s detections >= threshold.

    Images are numbered 1.. in name order, categories 1..num_classes (label i is category i + 1).
    """
    from pycocotools.coco import COCO

    check_threshold(threshold)
    files = folder_images(images)
    results = detect_images(files, reference, scale=TEST_SCALE, on_batch=on_batch)
    image_ids = list(range(1, len(files) + 1))
    cat_ids = list(range(1, reference.num_classes + 1))
    records = [r for r in detections_to_results(results, image_ids, cat_ids) if r["score"] >= threshold]
    if not records:
        raise BenchError(
            f"PyTorch fp32 finds no object scoring {threshold} or more in the {len(files)} images of "
            f"{str(images)!r}, so there are no pseudo-labels to score the formats against."
        )
    annotations = [
        {"id": i, "image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["bbox"],
         "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
        for i, r in enumerate(records, 1)
    ]  # fmt: skip
    dataset = {
        "images": [
            {"id": i, "file_name": res.path.name, "width": res.width, "height": res.height}
            for i, res in zip(image_ids, results, strict=True)
        ],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, class_names(reference.num_classes), strict=True)],
    }
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; stdout is for results
        coco.createIndex()
    return coco
