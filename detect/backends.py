"""Who runs the detector: the PyTorch model or an exported ONNX file, behind one call.

``backend(batch, image_sizes)`` takes a letterboxed batch (see :mod:`maedet.letterbox`) and returns one
:class:`~maedet.zoo.Detections` per image in network-input pixels. Every backend clamps boxes to the whole input
before NMS — the only bound a file with NMS inside can know — so the PyTorch model, a file with NMS and a
``--no-nms`` file give the same detections on the same batch; boxes are clamped to each original image later,
when mapped back (:func:`maedet.detect.run.map_back`). The authors clamp to the unpadded image before NMS
(``GFocalV2.predict(x, image_sizes=...)`` still does): the final boxes are the same, but NMS can differ where two
boxes of a class reach into the padding (see docs/detector.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from maedet.devices import parse_device
from maedet.errors import MaeDetError
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX, is_detector_folder
from maedet.zoo.detectors import create_detector
from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import Detections, PostprocessConfig, postprocess

__all__ = ["Backend", "OnnxBackend", "TorchBackend", "load_backend"]


class Backend:
    """What the detect and eval tools need from a runner."""

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fixed_hw: tuple[int, int] | None = None  # a static-size file takes exactly this input
    max_batch: int | None = None  # a static-batch file takes exactly this many images
    input_uint8: bool = False

    def __call__(self, batch: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        raise NotImplementedError


class TorchBackend(Backend):
    def __init__(self, detector: GFocalV2, device: str = "cpu", cfg: PostprocessConfig | None = None) -> None:
        device = parse_device(device)
        self.detector = detector.eval().to(device)
        self.device = device
        self.cfg = cfg
        self.name = detector.name
        self.num_classes = detector.num_classes
        self.mean, self.std = detector.mean, detector.std

    def __call__(self, batch: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        # clamped to the whole input, as a file with NMS inside does (see the module docstring)
        dets = self.detector.predict(batch.to(self.device), cfg=self.cfg)
        return [Detections(d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()) for d in dets]


class OnnxBackend(Backend):
    """An exported detector (``maedet-export NAME --onnx FILE``, with or without NMS) in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None) -> None:
        from maedet.export.detector_metadata import read_detector_metadata
        from maedet.export.metadata import normalisation
        from maedet.runtime import ort_session

        meta = read_detector_metadata(path)
        self.meta = meta
        self.session = ort_session(path, providers=tuple(providers or ("CPUExecutionProvider",)), what=str(path))
        self.name = str(meta.get("model_name", Path(path).stem))
        self.num_classes = int(meta["num_classes"])
        self.mean, self.std = normalisation(meta, repr(str(path)))
        shape = self.session.get_inputs()[0].shape
        self.input_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.fixed_hw = (int(shape[2]), int(shape[3])) if all(isinstance(d, int) for d in shape[2:]) else None
        self.max_batch = int(shape[0]) if isinstance(shape[0], int) else None
        self.raw = meta["outputs"] == "raw"
        self.cfg = PostprocessConfig(**meta["postprocess"])
        expected = 2 * len(meta["strides"]) if self.raw else None
        if expected is not None and len(self.session.get_outputs()) != expected:
            raise MaeDetError(
                f"{str(path)!r} has {len(self.session.get_outputs())} outputs, but its metadata's "
                f"{len(meta['strides'])} strides need {expected} (scores and distances per level)."
            )

    def __call__(self, batch: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        from maedet.export.detector_graph import DETECTION_OUTPUTS, unpad_detections
        from maedet.runtime import run_session

        outs = run_session(self.session, batch.numpy())
        if not self.raw:
            return unpad_detections(*(outs[n] for n in DETECTION_OUTPUTS))
        strides = self.meta["strides"]
        levels = [torch.from_numpy(outs[n]) for n in [o.name for o in self.session.get_outputs()]]
        scores, distances = levels[: len(strides)], levels[len(strides) :]
        return postprocess(scores, distances, strides, self.num_classes, tuple(batch.shape[-2:]), None, self.cfg)


def load_backend(
    model: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    *,
    num_classes: int | None = None,
    device: str = "cpu",
    pretrained: bool = False,
    **kwargs: Any,
) -> Backend:
    """A PyTorch backend (``model`` + ``checkpoint`` or ``pretrained``) or an ONNX one (``onnx``).

    ``checkpoint`` may be a converted detector folder (``maedet-convert ... --model NAME_gfl``), which also
    names the model; ``num_classes`` defaults to 80, or the folder's.
    """
    if onnx is not None:
        if checkpoint is not None or pretrained:
            raise MaeDetError("an ONNX file carries its own weights: give --onnx without --checkpoint.")
        if not Path(onnx).is_file():
            raise MaeDetError(f"ONNX file {str(onnx)!r} does not exist.")
        return OnnxBackend(onnx)
    if model is None and is_detector_folder(checkpoint):
        model, checkpoint = f"{LOCAL_PREFIX}{checkpoint}", None
    if model is None:
        raise MaeDetError("say which detector to run: --model NAME (with --checkpoint FILE) or --onnx FILE.")
    if checkpoint is None and not pretrained and not model.startswith((LOCAL_PREFIX, HUB_PREFIX)):
        raise MaeDetError(
            f"model {model!r} needs weights: --checkpoint FILE (the authors' latest.pth loads) or --pretrained."
        )
    detector = create_detector(model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, **kwargs)
    return TorchBackend(detector, device)
