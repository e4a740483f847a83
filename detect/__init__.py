"""Use the detectors: detect objects in image files, and measure COCO box AP (PyTorch model or ONNX file).

from maedet.detect import load_backend, detect_images
backend = load_backend("maedet_m_gfl", checkpoint="latest.pth")   # or load_backend(onnx="det.onnx")
results = detect_images(["street.jpg"], backend)
"""

from maedet.letterbox import TEST_SCALE, Letterboxed, collate, letterbox, rescale_size

from .backends import Backend, OnnxBackend, OpenVinoBackend, TorchBackend, load_backend
from .evaluate import CocoEval, coco_box_ap, evaluate, load_annotations
from .output import write_outputs
from .run import ImageResult, detect_images, map_back, read_image

__all__ = [
    "TEST_SCALE",
    "Backend",
    "CocoEval",
    "ImageResult",
    "Letterboxed",
    "OnnxBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "coco_box_ap",
    "collate",
    "detect_images",
    "evaluate",
    "letterbox",
    "load_annotations",
    "load_backend",
    "map_back",
    "read_image",
    "rescale_size",
    "write_outputs",
]
