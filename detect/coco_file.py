"""Reading a COCO annotation file (``instances_*.json``) as data, checked before pycocotools sees it.

pycocotools trusts the file: a missing ``file_name``, ``bbox`` or ``area``, an ``iscrowd`` of ``"yes"``, or ids of
mixed types end in a ``KeyError`` or ``TypeError`` deep inside it, sometimes only after the detector has run for
minutes. Here every record is checked once, in one linear pass, and the first problem is one sentence that says
where it is (``annotation 17 (id 18) has no 'area'``). Ids must be integers, as the COCO format defines them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.jsonio import read_json

__all__ = ["LARGE_FILE_BYTES", "check_coco_dataset", "read_coco"]

# From this size on, reading takes long enough (seconds to minutes) that each stage is logged at INFO; below it,
# at DEBUG, so a quick run and a refused one keep their single line of output.
LARGE_FILE_BYTES = 32 * 2**20
MAX_ANNOTATION_BYTES = 4 * 2**30  # instances_train2017.json is 448 MB

logger = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


# Per section: the fields every record must have, what each must be, and how that reads in a sentence.
_Rule = tuple[str, Callable[[Any], bool], str]
_RULES: dict[str, tuple[_Rule, ...]] = {
    "images": (
        ("id", _is_int, "an integer"),
        ("file_name", lambda v: isinstance(v, str) and bool(v), "a non-empty text"),
    ),
    "annotations": (
        ("id", _is_int, "an integer"),
        ("image_id", _is_int, "an integer"),
        ("category_id", _is_int, "an integer"),
        ("bbox", _is_box, "a list of 4 numbers (x, y, w, h)"),
        ("area", _is_number, "a number"),
    ),
    "categories": (("id", _is_int, "an integer"),),
}
_SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}


def _record_problem(section: str, index: int, record: Any) -> str | None:
    what = f"{_SINGULAR[section]} {index}"
    if not isinstance(record, Mapping):
        return f"{what} is a {type(record).__name__}, not an object"
    if "id" in record and _is_int(record["id"]):
        what += f" (id {record['id']})"
    for field, valid, kind in _RULES[section]:
        if field not in record:
            return f"{what} has no {field!r}"
        if not valid(record[field]):
            return f"{what} has {field} {_short(record[field])}, which is not {kind}"
    if section == "annotations" and record.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
        return f"{what} has iscrowd {_short(record['iscrowd'])}; it must be 0 or 1"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _cross_reference_problem(data: Mapping[str, Any]) -> str | None:
    """Every annotation's image and category must be listed (pycocotools would fail or count it nowhere)."""
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for index, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in image_ids:
            return f"annotation {index} (id {ann['id']}) names image {ann['image_id']}, which is not in 'images'"
        if ann["category_id"] not in category_ids:
            return (
                f"annotation {index} (id {ann['id']}) names category {ann['category_id']}, which is not in 'categories'"
            )
    return None


def check_coco_dataset(data: Any, name: str) -> None:
    """Refuse, in one sentence, a dataset that pycocotools' COCO and COCOeval cannot score as it is."""
    if not isinstance(data, Mapping):
        raise MaeDetError(f"{name!r} is not a COCO annotation file: it holds a {type(data).__name__}, not an object.")
    for section in _RULES:
        if section not in data:
            raise MaeDetError(f"{name!r} is not a COCO annotation file: it has no {section!r} list.")
        if not isinstance(data[section], list):
            raise MaeDetError(f"{name!r} is not a COCO annotation file: {section!r} is not a list.")
        for index, record in enumerate(data[section]):
            problem = _record_problem(section, index, record)
            if problem:
                raise MaeDetError(f"{name!r} is not a usable COCO annotation file: {problem}.")
    problem = _cross_reference_problem(data)
    if problem:
        raise MaeDetError(f"{name!r} is not a usable COCO annotation file: {problem}.")


def read_coco(path: str | os.PathLike[str]) -> Any:
    """A pycocotools ``COCO`` object for a checked annotation file, with a log line per stage (a large file
    takes a minute to read)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    path = Path(path)
    started = time.monotonic()
    size = path.stat().st_size
    level = logging.INFO if size >= LARGE_FILE_BYTES else logging.DEBUG
    logger.log(level, "reading the annotations %s (%.1f MB)", path.name, size / 1e6)
    data = read_json(path, "annotation file", max_bytes=MAX_ANNOTATION_BYTES)  # nesting, huge numbers: 1 sentence
    check_coco_dataset(data, str(path))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; stdout is for results
        coco.createIndex()
    logger.log(
        level,
        "read %d images, %d annotations and %d categories in %.0f s",
        len(data["images"]),
        len(data["annotations"]),
        len(data["categories"]),
        time.monotonic() - started,
    )
    return coco
