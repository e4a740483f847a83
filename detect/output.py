"""What maedet-detect writes: annotated copies of the images and one COCO-format JSON, all or nothing.

The JSON is a COCO dataset file (``images``, ``annotations`` with an added ``score``, ``categories``), so it loads
with pycocotools and any COCO viewer; boxes are ``[x, y, width, height]`` in the original image's pixels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError
from maedet.fileio import atomic_output_dir

from .run import ImageResult, read_image

__all__ = ["annotate", "check_out_dir", "coco_document", "write_outputs"]

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def annotate(image: np.ndarray, result: ImageResult, names: Sequence[str]) -> Any:
    """A PIL image with every detection's box and ``name score`` drawn on it."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    det = result.detections
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        color = _PALETTE[label % len(_PALETTE)]
        draw.rectangle(box, outline=color, width=2)
        text = f"{names[label] if 0 <= label < len(names) else label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
        draw.rectangle((left, top, right, bottom), fill=color)
        draw.text((box[0], box[1]), text, fill=(255, 255, 255))
    return canvas


def coco_document(results: Sequence[ImageResult], names: Sequence[str], cat_ids: Sequence[int]) -> dict[str, Any]:
    """The detections as a COCO dataset dict (image ids 1..N in input order)."""
    images, annotations = [], []
    for image_id, res in enumerate(results, start=1):
        images.append({"id": image_id, "file_name": res.path.name, "height": res.height, "width": res.width})
        det = res.detections
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[label],
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "area": round((x2 - x1) * (y2 - y1), 3),
                    "score": round(score, 5),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cid, "name": name} for cid, name in zip(cat_ids, names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The output folder must be new or empty (checked before any work, and again when writing)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MaeDetError(f"output folder {str(out)!r} exists and is not empty; give a new or empty folder.")
    return out


def _check_names(results: Sequence[ImageResult]) -> None:
    seen: dict[str, Path] = {}
    for res in results:
        if res.path.name in seen:
            raise MaeDetError(
                f"two inputs share the name {res.path.name!r} ({seen[res.path.name]} and {res.path}); "
                "their annotated copies would overwrite each other."
            )
        seen[res.path.name] = res.path


def write_outputs(
    results: Sequence[ImageResult],
    out_dir: str | os.PathLike[str],
    names: Sequence[str],
    cat_ids: Sequence[int],
    draw: bool = True,
) -> Path:
    """``out_dir/detections.json`` and (``draw``) an annotated copy of every image, appearing together."""
    out = check_out_dir(out_dir)
    _check_names(results)
    with atomic_output_dir(out, "output folder") as staging:
        document = coco_document(results, names, cat_ids)
        (staging / "detections.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
        if draw:
            for res in results:
                annotate(read_image(res.path), res, names).save(staging / res.path.name)
    return out / "detections.json"
