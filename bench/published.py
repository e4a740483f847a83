"""Published figures (docs/design.md §2, from the official README and the MAE-DET paper), shown with ``--paper``.

These are NOT measured here: COCO val AP of GFLV2 detectors with each backbone, and the params and GFLOPs exactly as
the official README lists them, quoted so readers can set our measurements beside the paper's claims. Always
labelled "published".
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "PUBLISHED_HEADLINE", "PUBLISHED_SOURCE", "Published", "published_for"]

PUBLISHED_SOURCE = "published: GFLV2 on COCO val, as listed in the official MAE-DET README; not measured here"
PUBLISHED_HEADLINE = (
    "published (paper): +2.0 AP over ResNet-50 at equal FLOPs; 1.54× faster inference than ResNet-50 at equal AP "
    "on an NVIDIA V100"
)


@dataclass(frozen=True)
class Published:
    coco_ap: float
    params_m: float  # millions, as published
    gflops: float  # as published


PUBLISHED: dict[str, Published] = {
    "resnet50": Published(44.7, 23.5, 83.6),
    "resnet101": Published(46.3, 42.4, 159.5),
    "maedet_s": Published(45.1, 21.2, 48.7),
    "maedet_m": Published(46.9, 25.8, 89.9),
    "maedet_l": Published(47.8, 43.9, 152.9),
}


def published_for(label: str) -> Published | None:
    return PUBLISHED.get(label)
