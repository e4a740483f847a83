"""COCO's 80 detection classes: names and the category ids of ``instances_*.json`` (1..90 with gaps).

Label ``i`` of an 80-class detector is the ``i``-th category in id order, as mmdetection's ``CocoDataset``.
"""

from __future__ import annotations

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASSES", "category_ids", "class_names"]

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in _UNUSED_IDS)


def class_names(num_classes: int) -> tuple[str, ...]:
    """COCO's names for an 80-class detector, ``class_<i>`` otherwise."""
    return COCO_CLASSES if num_classes == len(COCO_CLASSES) else tuple(f"class_{i}" for i in range(num_classes))


def category_ids(num_classes: int) -> tuple[int, ...]:
    """COCO's ids for an 80-class detector, ``i + 1`` otherwise."""
    return COCO_CATEGORY_IDS if num_classes == len(COCO_CLASSES) else tuple(range(1, num_classes + 1))
