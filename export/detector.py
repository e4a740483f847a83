"""The detector kind: a GFocalV2 detector → one ONNX file, network + decoding + NMS, or (``nms=False``) the raw
per-level outputs.

The network and the postprocess are traced separately and joined (:func:`~maedet.export.onnx_export.join_graphs`),
so fp16 and INT8 lower the network only while box decoding, NMS and top-k stay fp32 (``NonMaxSuppression`` takes
float32 only). The input is the normalised, padded NCHW float batch the PyTorch model takes (``embed_preprocess``:
uint8 pixels, normalised inside the graph); the whole input counts as the image when boxes are clamped. H and W
must be multiples of 32 (the authors' padding); with ``dynamic`` the batch, H and W are free.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
import torch

from maedet.zoo import fuse_bn
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX, is_detector_folder, local_detector_folder
from maedet.zoo.detectors import GENERIC_NAME, create_detector, list_detectors
from maedet.zoo.gfl import GFocalV2

from .check import synthetic_images, to_pixels
from .detector_check import DetectorCheck, check_detector
from .detector_graph import DETECTION_OUTPUTS, RawOutputs, postprocess_graph
from .errors import ExportError
from .kinds import ModelKind, Prepared
from .metadata import PIXEL_SCALE
from .onnx_export import INPUT_NAME
from .request import DETECTOR, ExportRequest
from .validate import check_activation_memory

__all__ = ["DetectorKind", "detector_reference", "is_detector", "resolve_detector"]

DETECTOR_SIZE_MULTIPLE = 32  # the authors pad every image to a multiple of 32


def detector_reference(name: Any) -> Any:
    """``name``, with a plain path to a trained or converted detector folder (what ``maedet-train`` and
    ``maedet-convert`` print) written as the ``local-dir:FOLDER`` reference the model factory takes."""
    if not isinstance(name, str) or name.startswith((LOCAL_PREFIX, HUB_PREFIX)) or name in list_detectors():
        return name
    return LOCAL_PREFIX + name if local_detector_folder(name) is not None else name


def is_detector(model: Any) -> bool:
    """A detector module or name, or ``local-dir:FOLDER`` of a converted or trained detector."""
    if isinstance(model, GFocalV2):
        return True
    if isinstance(model, str) and model.startswith(LOCAL_PREFIX):
        return is_detector_folder(model[len(LOCAL_PREFIX) :])
    return isinstance(model, str) and model in list_detectors()


def resolve_detector(
    model: str | GFocalV2, checkpoint: Any = None, num_classes: int | None = None, structure: Any = None
) -> GFocalV2:
    """The deploy form: eval mode, the backbone's BN folded (a given module is copied, never changed).

    ``structure`` (a searched MAE-DET backbone) goes with the generic name ``gfl``. ``checkpoint`` may be a
    converted detector folder; ``num_classes`` defaults to 80, or the folder's.
    """
    if isinstance(model, str):
        detector = create_detector(model, checkpoint=checkpoint, num_classes=num_classes, structure=structure)
    elif isinstance(model, GFocalV2):
        if checkpoint is not None or structure is not None:
            raise ExportError("checkpoint and structure apply to a detector name; a module already has its weights.")
        detector = copy.deepcopy(model)
    else:
        raise ExportError(f"model must be a detector name or a GFocalV2 module, not {type(model).__name__}.")
    detector.backbone = fuse_bn(detector.backbone, inplace=True)
    for p in detector.parameters():
        p.requires_grad_(False)
    return detector.eval()


def _level_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    return {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names}


class DetectorKind(ModelKind):
    name = DETECTOR
    default_size = (800, 1344)  # (H, W): the authors' test scale for landscape images, padded to 32
    min_opset = 13  # RawOutputs and NonMaxSuppression's form

    def check_model(self, model: Any, request: ExportRequest) -> None:
        if not isinstance(model, str):
            return
        if model == GENERIC_NAME and request.structure is None and not is_detector_folder(request.checkpoint):
            raise ExportError("detector 'gfl' needs --structure FILE (a searched MAE-DET backbone).")
        if model != GENERIC_NAME and request.structure is not None:
            raise ExportError(f"{model!r} has a fixed backbone; a structure goes with 'gfl'.")

    def prepare(self, model: Any, request: ExportRequest, size: tuple[int, int]) -> Prepared:
        h, w = (int(v) for v in size)
        if h % DETECTOR_SIZE_MULTIPLE or w % DETECTOR_SIZE_MULTIPLE:
            raise ExportError(f"input size {h}×{w} must be positive multiples of 32 (the authors pad to 32).")
        detector = resolve_detector(model, request.checkpoint, request.num_classes, request.structure)
        batch = request.batch
        check_activation_memory(detector, (batch, 3, h, w), f"exporting {detector.name} at {batch}×{h}×{w}")
        example = torch.from_numpy(synthetic_images(batch, h, w, detector.mean, detector.std, seed=1234))
        if request.embed_preprocess:
            example = torch.from_numpy(to_pixels(example.numpy(), detector.mean, detector.std))
        module = RawOutputs(detector, request.embed_preprocess, with_input_hw=request.nms).eval()
        with torch.no_grad():
            reference = tuple(module(example))
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} | _level_axes(detector.output_names)
        return Prepared(detector.name, module, example, reference, list(module.output_names), tuple(detector.mean),
                        tuple(detector.std), detector, axes=axes)  # fmt: skip

    def _cfg(self, prepared: Prepared, request: ExportRequest) -> Any:
        return request.postprocess_cfg or prepared.handle.postprocess_cfg

    def post_graph(self, prepared: Prepared, request: ExportRequest) -> onnx.ModelProto | None:
        if not request.nms:
            return None
        cfg = self._cfg(prepared, request)
        return postprocess_graph(prepared.handle, prepared.reference, cfg, dynamic=request.dynamic, opset=request.opset)

    def outputs(self, prepared: Prepared, request: ExportRequest) -> list[str]:
        return list(DETECTION_OUTPUTS) if request.nms else list(prepared.output_names)

    def to_input(self, prepared: Prepared, images: np.ndarray) -> np.ndarray:
        if prepared.example.dtype != torch.uint8:
            return images
        return to_pixels(images, prepared.mean, prepared.std)

    def metadata(self, prepared: Prepared, request: ExportRequest) -> dict[str, Any]:
        """What a consumer (maedet-detect, maedet-eval, the bench) needs to run the file without the model."""
        detector, cfg = prepared.handle, self._cfg(prepared, request)
        return {
            "task": "detection",
            "outputs": "detections" if request.nms else "raw",
            "input_dtype": "uint8" if request.embed_preprocess else "float32",
            "pixel_scale": "in the graph (uint8 input)" if request.embed_preprocess else PIXEL_SCALE,
            "num_classes": detector.num_classes,
            "cls_channels": detector.cls_channels,
            "strides": list(detector.strides),
            "postprocess": {
                "nms_pre": cfg.nms_pre,
                "score_thr": cfg.score_thr,
                "iou_thr": cfg.iou_thr,
                "max_per_img": cfg.max_per_img,
            },
        }

    def check(
        self,
        prepared: Prepared,
        request: ExportRequest,
        file_bytes: bytes,
        network_bytes: bytes,
        runtime: str = "onnxruntime",
    ) -> DetectorCheck:
        cfg = self._cfg(prepared, request)
        return check_detector(
            prepared.handle, cfg, file_bytes, network_bytes, prepared.example, request.precision, request.nms,
            tolerance=request.tolerance, runtime=runtime,
        )  # fmt: skip
