"""COCO AP as the export's accuracy measure, and the ``maedet-export`` entry point that plugs it in.

The INT8 budget search (:mod:`maedet.export.int8_budget`) sits in the export layer, below detect, so it takes its
measure as a parameter. Here, in the detect layer, is the measure for detector files: ``evaluate`` (the code
``maedet-eval`` runs) on the user's annotated images, AP at IoU .50:.95 in points (0-100, as ``maedet-eval`` and
the bench's AP table print it). ``maedet-export`` enters through :func:`export_main`, which hands the export CLI a
way to make that measure from ``--data`` and ``--images``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError

from .backends import OnnxBackend
from .evaluate import evaluate, load_annotations

__all__ = ["CocoApMeasure", "coco_ap_measure", "export_main"]


class CocoApMeasure:
    """COCO box AP in points of a detector file on an annotated image set (read once, scored many times)."""

    name = "AP"

    def __init__(self, coco: Any, images: Path) -> None:
        self.coco, self.images = coco, images

    def __call__(self, path: Path) -> float:
        return 100.0 * evaluate(OnnxBackend(path), self.coco, self.images).stats["AP"]


def coco_ap_measure(data: str | os.PathLike[str], images: str | os.PathLike[str]) -> CocoApMeasure:
    """The measure for ``--data FILE --images DIR``; a bad annotation file or a missing folder is one sentence now,
    before any export."""
    coco = load_annotations(data)
    folder = Path(images)
    if not folder.is_dir():
        raise MaeDetError(f"--images {str(folder)!r} is not a folder of the annotated images.")
    return CocoApMeasure(coco, folder)


def export_main(argv: Sequence[str] | None = None) -> int:
    """``maedet-export`` with COCO AP available to ``--max-ap-drop`` (see the module docstring)."""
    from maedet.export.cli import main

    return main(argv, accuracy_measure_factory=coco_ap_measure)


if __name__ == "__main__":
    sys.exit(export_main())
