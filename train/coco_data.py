"""Read a COCO annotation file into clean training records, with one sentence for every way a file can be wrong.

What mmdetection's ``CocoDataset`` keeps for training, and so what we keep (docs/training.md, "Data"):

* a box ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]`` (no −1);
* a box whose width or height is below 1 pixel, whose ``area`` is 0 or negative, or that lies wholly outside its
  image is dropped; so is one with a NaN or infinite number; the counts go to the log;
* crowd boxes (``iscrowd`` 1) are not trained on;
* label ``i`` is the file's ``i``-th category in id order (the rule ``maedet-eval`` uses), whether or not a
  category has annotations and whatever its first id is;
* with ``filter_empty_gt`` an image with no annotation of a listed category is left out (mmdetection's rule: an
  image whose annotations are all crowd or dropped stays, with no boxes).

The file is parsed as data; a structural fault (a missing list, a wrong type, an id that points nowhere) is a
:class:`~maedet.errors.MaeDetError` naming the file and the first faulty entry.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maedet.errors import MaeDetError

__all__ = ["CocoRecords", "DropCounts", "ImageRecord", "check_images", "load_coco"]

LOGGER = logging.getLogger("maedet")


@dataclass(frozen=True)
class ImageRecord:
    """One training image: where it is, its declared size, and its boxes (x1, y1, x2, y2) with 0-based labels."""

    path: Path
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float32, xyxy in the image's pixels
    labels: np.ndarray  # (N,) int64, 0..num_classes-1
    image_id: int


@dataclass
class DropCounts:
    """What the reader left out, for the log and for the caller."""

    degenerate: int = 0  # width or height < 1, area <= 0, or wholly outside the image
    non_finite: int = 0  # NaN or infinity in bbox or area
    crowd: int = 0
    empty_images: int = 0  # images left out by filter_empty_gt

    def sentence(self) -> str:
        parts = [
            f"{self.degenerate} boxes of zero or negative size (or outside their image)",
            f"{self.non_finite} boxes with NaN/infinite numbers",
            f"{self.crowd} crowd boxes",
            f"{self.empty_images} images without annotations",
        ]
        return "dropped " + ", ".join(parts)


@dataclass(frozen=True)
class CocoRecords:
    """The records of one annotation file, its categories in label order and what was dropped."""

    path: Path
    records: list[ImageRecord]
    category_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    dropped: DropCounts = field(default_factory=DropCounts)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def num_boxes(self) -> int:
        return sum(len(r.labels) for r in self.records)


class _Fault(Exception):
    """What is wrong inside the file; :func:`load_coco` turns it into a sentence that names the file."""


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise MaeDetError(f"annotation file {str(path)!r} does not exist.")
    if path.is_dir():
        raise MaeDetError(f"annotation file {str(path)!r} is a folder, not a JSON file.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MaeDetError(f"annotation file {str(path)!r} cannot be read ({exc.strerror}).") from None
    if not raw.strip():
        raise MaeDetError(f"annotation file {str(path)!r} is empty.")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise MaeDetError(f"annotation file {str(path)!r} is not UTF-8 text (is it a JSON file?).") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise MaeDetError(f"annotation file {str(path)!r} is not valid JSON ({exc.msg} at {where}).") from None
    except RecursionError:
        raise MaeDetError(f"annotation file {str(path)!r} nests JSON too deeply to be a COCO file.") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _entries(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    if key not in data:
        raise _Fault(f"has no {key!r} list")
    entries = data[key]
    if not isinstance(entries, list):
        raise _Fault(f"has {key!r} as {_type_name(entries)}, not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _Fault(f"has {key}[{i}] as {_type_name(entry)}, not an object")
    return entries


def _int_field(entry: Mapping[str, Any], key: str, where: str, *, positive: bool = False) -> int:
    if key not in entry:
        raise _Fault(f"has no {key!r} in {where}")
    value = entry[key]
    if not _is_int(value):
        raise _Fault(f"has {where}.{key} = {value!r} ({_type_name(value)}); COCO ids and sizes are integers")
    if positive and value < 1:
        raise _Fault(f"has {where}.{key} = {value}, which must be at least 1")
    return value


def _categories(data: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    names: dict[int, str] = {}
    for i, cat in enumerate(_entries(data, "categories")):
        cat_id = _int_field(cat, "id", f"categories[{i}]")
        if cat_id in names:
            raise _Fault(f"lists category id {cat_id} twice")
        name = cat.get("name", f"class_{cat_id}")
        names[cat_id] = name if isinstance(name, str) and name else f"class_{cat_id}"
    if not names:
        raise _Fault("lists no categories")
    ids = tuple(sorted(names))
    return ids, tuple(names[i] for i in ids)


def _images(data: Mapping[str, Any], root: Path) -> dict[int, tuple[Path, int, int]]:
    images: dict[int, tuple[Path, int, int]] = {}
    for i, img in enumerate(_entries(data, "images")):
        where = f"images[{i}]"
        image_id = _int_field(img, "id", where)
        if image_id in images:
            raise _Fault(f"lists image id {image_id} twice")
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise _Fault(f"has no usable 'file_name' in {where} (got {_type_name(name)})")
        height = _int_field(img, "height", where, positive=True)
        width = _int_field(img, "width", where, positive=True)
        images[image_id] = (root / name, height, width)  # an absolute file_name replaces root
    if not images:
        raise _Fault("lists no images")
    return images


def _iscrowd(ann: Mapping[str, Any], where: str) -> bool:
    value = ann.get("iscrowd", 0)
    if value in (0, 1) and (_is_int(value) or isinstance(value, bool)):
        return bool(value)
    raise _Fault(f"has {where}.iscrowd = {value!r}; it must be 0 or 1")


def _bbox(ann: Mapping[str, Any], where: str) -> list[float]:
    if "bbox" not in ann:
        raise _Fault(f"has no 'bbox' in {where}")
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise _Fault(f"has {where}.bbox = {str(bbox)[:60]}, not a list of 4 numbers [x, y, w, h]")
    return [float(v) for v in bbox]


def _area(ann: Mapping[str, Any], bbox: Sequence[float], where: str) -> float:
    area = ann.get("area", bbox[2] * bbox[3])
    if not _is_number(area):
        raise _Fault(f"has {where}.area = {area!r}, not a number")
    return float(area)


def _keep_box(bbox: Sequence[float], area: float, hw: tuple[int, int], drops: DropCounts) -> bool:
    """mmdetection's test: finite, at least 1×1, positive area, and some overlap with the image."""
    if not all(math.isfinite(v) for v in (*bbox, area)):
        drops.non_finite += 1
        return False
    x, y, w, h = bbox
    inside_w = min(x + w, hw[1]) - max(x, 0.0)
    inside_h = min(y + h, hw[0]) - max(y, 0.0)
    if w < 1 or h < 1 or area <= 0 or inside_w <= 0 or inside_h <= 0:
        drops.degenerate += 1
        return False
    return True


def _annotations(
    data: Mapping[str, Any], images: Mapping[int, tuple[Path, int, int]], labels: Mapping[int, int], drops: DropCounts
) -> tuple[dict[int, list[tuple[list[float], int]]], set[int]]:
    """Kept boxes per image id, and the ids of images with any annotation of a listed category."""
    boxes: dict[int, list[tuple[list[float], int]]] = {}
    annotated: set[int] = set()
    for i, ann in enumerate(_entries(data, "annotations")):
        where = f"annotations[{i}]"
        image_id = _int_field(ann, "image_id", where)
        category_id = _int_field(ann, "category_id", where)
        if image_id not in images:
            raise _Fault(f"has {where} pointing to image id {image_id}, which 'images' does not list")
        if category_id not in labels:
            raise _Fault(f"has {where} pointing to category id {category_id}, which 'categories' does not list")
        crowd = _iscrowd(ann, where)
        bbox = _bbox(ann, where)
        area = _area(ann, bbox, where)
        annotated.add(image_id)
        if not _keep_box(bbox, area, images[image_id][1:], drops):
            continue
        if crowd:
            drops.crowd += 1
            continue
        x, y, w, h = bbox
        boxes.setdefault(image_id, []).append(([x, y, x + w, y + h], labels[category_id]))
    return boxes, annotated


def _record(image_id: int, image: tuple[Path, int, int], boxes: list[tuple[list[float], int]]) -> ImageRecord:
    xyxy = np.array([b for b, _ in boxes], dtype=np.float32).reshape(-1, 4)
    labels = np.array([lab for _, lab in boxes], dtype=np.int64)
    return ImageRecord(image[0], image[1], image[2], xyxy, labels, image_id)


def load_coco(
    annotations: str | os.PathLike[str], images_dir: str | os.PathLike[str], *, filter_empty_gt: bool = True
) -> CocoRecords:
    """The training records of a COCO file, images in id order; file names are relative to ``images_dir``."""
    path = Path(annotations)
    data = _read_json(path)
    try:
        if not isinstance(data, dict):
            raise _Fault(f"holds {_type_name(data)} at the top, not an object with images, annotations, categories")
        category_ids, names = _categories(data)
        labels = {cat_id: i for i, cat_id in enumerate(category_ids)}
        images = _images(data, Path(images_dir))
        drops = DropCounts()
        boxes, annotated = _annotations(data, images, labels, drops)
    except _Fault as fault:
        raise MaeDetError(f"annotation file {str(path)!r} {fault}.") from None
    except RecursionError:
        raise MaeDetError(f"annotation file {str(path)!r} nests JSON too deeply to be a COCO file.") from None
    kept = [i for i in sorted(images) if not filter_empty_gt or i in annotated]
    drops.empty_images = len(images) - len(kept)
    if not kept:
        raise MaeDetError(f"annotation file {str(path)!r} has no image with annotations to train on.")
    records = [_record(i, images[i], boxes.get(i, [])) for i in kept]
    result = CocoRecords(path, records, category_ids, names, drops)
    LOGGER.info(
        "%s: %d images, %d boxes, %d classes; %s.", path.name, len(records), result.num_boxes, len(names),
        drops.sentence(),
    )  # fmt: skip
    return result


def _header_size(path: Path) -> tuple[int, int]:
    """(height, width) as the image will be decoded (EXIF rotations by 90° swap them), from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            # only where EXIF sits in the header: PNG's getexif() would decode the whole image to find it
            exif_in_header = img.format in ("JPEG", "MPO", "TIFF")
            orientation = img.getexif().get(0x0112, 1) if exif_in_header else 1
    except FileNotFoundError:
        raise MaeDetError(f"image {str(path)!r} does not exist.") from None
    except IsADirectoryError:
        raise MaeDetError(f"image {str(path)!r} is a folder, not an image file.") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise MaeDetError(f"image {str(path)!r} cannot be read as an image.") from None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def check_images(records: Sequence[ImageRecord], on_image: Callable[[], None] | None = None) -> int:
    """Open every image's header (no decoding): the first missing or unreadable file is one sentence.

    Returns how many images have a size other than the one the file declares (logged as a warning; the boxes are
    taken to be in the pixels of the image as it decodes).
    """
    mismatched: list[Path] = []
    for record in records:
        if _header_size(record.path) != (record.height, record.width):
            mismatched.append(record.path)
        if on_image is not None:
            on_image()
    if mismatched:
        LOGGER.warning(
            "%d images differ in size from what the annotation file declares (first: %s).",
            len(mismatched), mismatched[0],
        )  # fmt: skip
    return len(mismatched)
