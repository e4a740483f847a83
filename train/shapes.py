"""A synthetic detection data set in COCO format, made offline: coloured shapes on varied backgrounds.

Its purpose is a demo that trains on a laptop CPU in minutes: a small detector trained from scratch should reach
AP50 ≥ 0.8 on the held-out split, so objects are clearly visible and mostly not tiny, yet the task is not
trivial — six shape classes at any rotation, sizes from about 8 % to 50 % of the short side, colours drawn at
random but kept apart from the local background, backgrounds that are flat, gradients, smooth blotches or
cluttered with lines and dots, partial overlaps (a later shape may hide up to 40 % of an earlier one, whose box
stays the whole shape), blur and pixel noise. Each object's box and area come from its own rendered mask, so they are
exact to the pixel. Image ``i`` of a split is drawn from the seed sequence (seed, split, i): a set is the same for
a seed, and train and val never share a draw.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maedet.errors import MaeDetError
from maedet.fileio import atomic_output_dir

__all__ = ["SHAPE_CLASSES", "ShapeObject", "generate_shapes", "render_image", "shape_mask"]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
SPLITS = {"train": 0, "val": 1}
MIN_SIZE, MAX_SIZE = 64, 4096
_SIZE_RANGE = (0.08, 0.5)  # object diameter as a fraction of the image's short side (log-uniform)
_MAX_OBJECTS = 6
_BYTES_PER_PIXEL = 0.6  # a JPEG at quality 92 with noise; the measured mean is about 0.25
_MIN_CONTRAST = 70.0  # mean absolute RGB difference between an object and the background under it


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its class index, box (x, y, w, h) and pixel area."""

    label: int
    bbox: tuple[int, int, int, int]
    area: int


def _turn(points: list[tuple[float, float]], quarters: int) -> list[tuple[float, float]]:
    for _ in range(quarters):
        points = [(y, -x) for x, y in points]
    return points


def _polygon(kind: str, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices around (0, 0) for the polygon classes."""
    if kind == "square":
        local = [(radius * math.cos(a), radius * math.sin(a)) for a in (math.pi / 4 * k for k in (1, 3, 5, 7))]
    elif kind == "triangle":
        local = [(radius * math.cos(a), radius * math.sin(a)) for a in (2 * math.pi / 3 * k for k in range(3))]
    elif kind == "star":
        radii = [radius if k % 2 == 0 else 0.45 * radius for k in range(10)]
        local = [(r * math.cos(math.pi / 5 * k), r * math.sin(math.pi / 5 * k)) for k, r in enumerate(radii)]
    else:  # cross: a plus sign with arms 0.3 of the radius wide on each side
        a, r = 0.3 * radius, radius
        quarter = [(a, r), (a, a), (r, a)]  # one arm's corner, then turned by 90° three times
        local = [(x, y) for k in range(4) for x, y in (_turn(quarter, k))]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in local]


def shape_mask(kind: str, radius: float, angle: float = 0.0, ring_width: float = 0.3) -> Image.Image:
    """The shape as an 'L' mask (255 inside) centred in a square canvas of side ``2 * ceil(radius) + 2``."""
    if kind not in SHAPE_CLASSES:
        raise MaeDetError(f"unknown shape class {kind!r}; choose from {', '.join(SHAPE_CLASSES)}.")
    half = math.ceil(radius) + 1
    mask = Image.new("L", (2 * half, 2 * half), 0)
    draw = ImageDraw.Draw(mask)
    if kind in ("circle", "ring"):
        draw.ellipse((half - radius, half - radius, half + radius - 1, half + radius - 1), fill=255)
        if kind == "ring":
            inner = radius * (1.0 - ring_width)
            draw.ellipse((half - inner, half - inner, half + inner - 1, half + inner - 1), fill=0)
    else:
        draw.polygon([(half + x, half + y) for x, y in _polygon(kind, radius, angle)], fill=255)
    return mask


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Flat, a linear gradient, smooth blotches, or any of them with clutter added later (float32 H×W×3)."""
    style = rng.integers(0, 3)
    if style == 0:
        return np.broadcast_to(_colour(rng), (h, w, 3)).copy()
    if style == 1:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        a, b = _colour(rng), _colour(rng)
        return a + t[..., None] * (b - a)
    spread = float(rng.uniform(30, 90))  # blotches around one colour, so a shape's contrast is not lost in them
    base = _colour(rng).clip(spread, 255 - spread)
    grid = (base + rng.uniform(-spread, spread, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32)


def _clutter(rng: np.random.Generator, image: Image.Image) -> None:
    """Thin lines, arcs and dots: edges and colours that are not objects."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(5, 25))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            end = (x + rng.normal(0, w / 4), y + rng.normal(0, h / 4))
            draw.line((x, y, *end), fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:
            r = float(rng.uniform(4, w / 6))
            start = float(rng.uniform(0, 360))
            draw.arc((x - r, y - r, x + r, y + r), start, start + float(rng.uniform(30, 200)), fill=colour, width=1)
        else:
            r = float(rng.uniform(1, 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, ...]:
    mean = under.reshape(-1, 3).mean(axis=0)
    best, best_gap = _colour(rng), -1.0
    for _ in range(12):
        colour = _colour(rng)
        gap = float(np.abs(colour - mean).mean())
        if gap > best_gap:
            best, best_gap = colour, gap
        if gap >= _MIN_CONTRAST:
            break
    return tuple(int(c) for c in best)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@dataclass
class _Canvas:
    """An image being drawn, which object owns each pixel, and how much of each object is still visible."""

    image: Image.Image
    base: np.ndarray  # the background, float32 H×W×3
    owners: np.ndarray  # int16 H×W: index of the object on top, −1 for background
    placed: list[ShapeObject] = field(default_factory=list)
    visible: list[int] = field(default_factory=list)

    def try_draw(self, label: int, mask: Image.Image, x0: int, y0: int, rng: np.random.Generator) -> bool:
        """Draw unless an earlier object would keep under 60 % of its pixels or the boxes would overlap
        with IoU above 0.5 (two boxes that close look like one object to the NMS)."""
        bits = np.asarray(mask) > 0
        cols, rows = np.flatnonzero(bits.any(axis=0)), np.flatnonzero(bits.any(axis=1))
        box = (x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
        side = mask.size[0]
        region = self.owners[y0 : y0 + side, x0 : x0 + side]
        under = region[bits]
        covered = np.bincount(under[under >= 0], minlength=len(self.placed))
        for obj, seen, lost in zip(self.placed, self.visible, covered, strict=True):
            if seen - lost < 0.6 * obj.area or _box_iou(box, obj.bbox) > 0.5:
                return False
        colour = _contrasting_colour(rng, self.base[y0 : y0 + side, x0 : x0 + side])
        self.image.paste(colour, (x0, y0), mask)  # the mask is 0 or 255: no anti-aliasing
        region[bits] = len(self.placed)
        self.visible = [seen - int(lost) for seen, lost in zip(self.visible, covered, strict=True)]
        self.visible.append(int(bits.sum()))
        self.placed.append(ShapeObject(label, box, int(bits.sum())))
        return True


def _place(rng: np.random.Generator, canvas: _Canvas, classes: Sequence[int]) -> None:
    """Draw one object where it hides little of the others (a few tries, else none)."""
    w, h = canvas.image.size
    short = min(w, h)
    for _ in range(10):
        diameter = short * math.exp(rng.uniform(math.log(_SIZE_RANGE[0]), math.log(_SIZE_RANGE[1])))
        label = int(classes[int(rng.integers(0, len(classes)))])
        angle, ring_width = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.25, 0.45))
        mask = shape_mask(SHAPE_CLASSES[label], diameter / 2, angle, ring_width)
        side = mask.size[0]
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        if canvas.try_draw(label, mask, x0, y0, rng):
            return


def render_image(
    rng: np.random.Generator, size: int, classes: Sequence[int] = tuple(range(len(SHAPE_CLASSES)))
) -> tuple[Image.Image, list[ShapeObject]]:
    """One image (long side ``size``, short side 75-100 % of it) and its objects; ``classes`` are indices."""
    short = int(rng.integers(math.ceil(0.75 * size), size + 1))
    h, w = (short, size) if rng.random() < 0.5 else (size, short)
    base = _background(rng, h, w)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.35:
        _clutter(rng, image)
    canvas = _Canvas(image, base, np.full((h, w), -1, np.int16))
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        _place(rng, canvas, classes)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.BoxBlur(float(rng.uniform(0.5, 1.2))))
    sigma = float(rng.choice([0.0, rng.uniform(2, 12)]))
    if sigma > 0:
        noise = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
        image = Image.fromarray((np.asarray(image, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8))
    return image, canvas.placed


def _split_json(images: list[dict[str, Any]], objects: list[list[ShapeObject]], names: Sequence[str]) -> dict:
    annotations = []
    for image, found in zip(images, objects, strict=True):
        for obj in found:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": obj.label + 1,
                    "bbox": [float(v) for v in obj.bbox],
                    "area": float(obj.area),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": SHAPE_CLASSES.index(n) + 1, "name": n, "supercategory": "shape"} for n in names]
    info = {"description": "maedet synthetic shapes (maedet-data shapes)", "version": "1"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories, "licenses": []}


def _write_split(
    folder: Path, split: str, count: int, size: int, seed: int, classes: Sequence[int], tick: Callable[[], None]
) -> dict:
    (folder / split).mkdir()
    images: list[dict[str, Any]] = []
    objects: list[list[ShapeObject]] = []
    for index in range(count):
        image, found = render_image(np.random.default_rng([seed, SPLITS[split], index]), size, classes)
        name = f"{index:06d}.jpg"
        image.save(folder / split / name, quality=92)
        images.append({"id": index + 1, "file_name": name, "width": image.width, "height": image.height})
        objects.append(found)
        tick()
    return _split_json(images, objects, [SHAPE_CLASSES[c] for c in classes])


def _check_request(counts: dict[str, int], size: int, classes: Sequence[str]) -> list[int]:
    for split, count in counts.items():
        if count < 1:
            raise MaeDetError(f"--{split} must be at least 1 image, got {count}.")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise MaeDetError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}.")
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        what = f"unknown class {unknown[0]!r}" if unknown else "an empty or repeated class list"
        raise MaeDetError(f"--classes has {what}; choose distinct names from {', '.join(SHAPE_CLASSES)}.")
    return sorted(SHAPE_CLASSES.index(c) for c in classes)


def _check_out(out: Path, images: int, size: int) -> None:
    """A new or empty folder, a name the file system takes, and room for the images (estimated generously)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MaeDetError(f"the output {str(out)!r} exists and is not a folder; give a new or empty folder.")
    if out.is_dir() and any(out.iterdir()):
        raise MaeDetError(f"the output folder {str(out)!r} exists and is not empty; give a new or empty folder.")
    if not out.parent.is_dir():
        return  # atomic_output_dir says so in its own sentence
    if len(os.fsencode(out.name)) > os.pathconf(out.parent, "PC_NAME_MAX"):
        raise MaeDetError(f"the output folder name is too long for this file system ({str(out.name)[:40]}...).")
    need = images * (_BYTES_PER_PIXEL * size * size + 300)
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise MaeDetError(
            f"{images} images of {size} px need about {_human(need)} but {str(out.parent)!r} has {_human(free)} free."
        )


def _human(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def generate_shapes(
    out: str | os.PathLike[str],
    *,
    train: int,
    val: int,
    size: int = 256,
    seed: int = 0,
    classes: Sequence[str] = SHAPE_CLASSES,
    on_image: Callable[[], None] | None = None,
) -> Path:
    """Write ``out/train``, ``out/val`` (JPEG images) and ``out/train.json``, ``out/val.json``; all or nothing.

    Categories keep their ids 1..6 of :data:`SHAPE_CLASSES` whichever subset is asked for.
    """
    out = Path(out)
    counts = {"train": int(train), "val": int(val)}
    indices = _check_request(counts, int(size), list(classes))
    _check_out(out, sum(counts.values()), int(size))
    tick = on_image or (lambda: None)
    with atomic_output_dir(out, "data folder") as staging:
        for split, count in counts.items():
            coco = _write_split(staging, split, count, int(size), int(seed), indices, tick)
            (staging / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")
    return out
