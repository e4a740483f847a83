"""Who runs the detector: the PyTorch model, an exported ONNX file or its OpenVINO IR, behind one call.

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

import numpy as np
import torch

from maedet.devices import parse_device
from maedet.errors import MaeDetError
from maedet.zoo.detector_folder import HUB_PREFIX, LOCAL_PREFIX, is_detector_folder
from maedet.zoo.detectors import create_detector
from maedet.zoo.gfl import GFocalV2
from maedet.zoo.gfl_postprocess import Detections, PostprocessConfig, postprocess

__all__ = ["Backend", "OnnxBackend", "OpenVinoBackend", "TorchBackend", "load_backend"]


class Backend:
    """What the detect and eval tools need from a runner."""

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fixed_hw: tuple[int, int] | None = None  # a static-size file takes exactly this input
    max_batch: int | None = None  # a static-batch file takes exactly this many images
    input_uint8: bool = False
    export_hw: tuple[int, int] | None = None  # the input size a file was exported and checked at (its metadata)

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


def _export_hw(input_size: Any) -> tuple[int, int] | None:
    """(H, W) of the metadata's ``input_size`` ([C, H, W]), or None when a file does not record it."""
    if isinstance(input_size, list) and len(input_size) == 3 and all(isinstance(v, int) and v > 0 for v in input_size):
        return int(input_size[1]), int(input_size[2])
    return None


class _ExportedBackend(Backend):
    """A detector file (ONNX or OpenVINO IR, with or without NMS): its metadata says how to feed and read it."""

    def _setup(self, meta: dict[str, Any], path: str | os.PathLike[str], shape: Sequence[Any], uint8: bool) -> None:
        from maedet.export.metadata import normalisation

        self.meta = meta
        self.name = str(meta.get("model_name", Path(path).stem))
        self.num_classes = int(meta["num_classes"])
        self.mean, self.std = normalisation(meta, repr(str(path)))
        self.input_uint8 = uint8
        self.fixed_hw = (int(shape[2]), int(shape[3])) if all(isinstance(d, int) for d in shape[2:]) else None
        self.max_batch = int(shape[0]) if isinstance(shape[0], int) else None
        self.export_hw = _export_hw(meta.get("input_size"))
        self.raw = meta["outputs"] == "raw"
        self.cfg = PostprocessConfig(**meta["postprocess"])
        expected = 2 * len(meta["strides"]) if self.raw else None
        if expected is not None and len(self.output_names) != expected:
            raise MaeDetError(
                f"{str(path)!r} has {len(self.output_names)} outputs, but its metadata's "
                f"{len(meta['strides'])} strides need {expected} (scores and distances per level)."
            )

    output_names: list[str]

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, batch: torch.Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        from maedet.export.detector_graph import DETECTION_OUTPUTS, unpad_detections

        outs = self._run(batch.numpy())
        if not self.raw:
            return unpad_detections(*(outs[n] for n in DETECTION_OUTPUTS))
        strides = self.meta["strides"]
        levels = [torch.from_numpy(outs[n]) for n in self.output_names]
        scores, distances = levels[: len(strides)], levels[len(strides) :]
        return postprocess(scores, distances, strides, self.num_classes, tuple(batch.shape[-2:]), None, self.cfg)


class OnnxBackend(_ExportedBackend):
    """An exported detector (``maedet-export NAME --onnx FILE``, with or without NMS) in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None) -> None:
        from maedet.export.detector_metadata import read_detector_metadata
        from maedet.runtime import ort_session

        meta = read_detector_metadata(path)
        self.session = ort_session(path, providers=tuple(providers or ("CPUExecutionProvider",)), what=str(path))
        self.output_names = [o.name for o in self.session.get_outputs()]
        arg = self.session.get_inputs()[0]
        self._setup(meta, path, arg.shape, arg.type == "tensor(uint8)")

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from maedet.runtime import run_session

        return run_session(self.session, images)


class OpenVinoBackend(_ExportedBackend):
    """An exported detector's OpenVINO IR (``maedet-export NAME --openvino DIR``, its folder or .xml) or ONNX file on
    CPU: the same contract as :class:`OnnxBackend`, the metadata read from the IR's rt_info (or the file's)."""

    def __init__(self, folder: str | os.PathLike[str], threads: int | None = None) -> None:
        from maedet.export.detector_metadata import check_detector_metadata, read_detector_metadata
        from maedet.export.openvino import read_ir_metadata
        from maedet.openvino_runtime import ov_compile, ov_model

        model = ov_model(folder, repr(str(folder)))
        if Path(folder).suffix == ".onnx":  # the exported ONNX file itself, which OpenVINO reads as it is
            meta = read_detector_metadata(folder)
        else:
            meta = check_detector_metadata(read_ir_metadata(model, folder), folder)
        self.compiled = ov_compile(model, threads=threads, what=str(folder))
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        port = self.compiled.inputs[0]
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        self._setup(meta, folder, shape, port.get_element_type().get_type_name() == "u8")

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from maedet.openvino_runtime import ov_run

        return ov_run(self.compiled, images)


def load_backend(
    model: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    *,
    openvino: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    device: str = "cpu",
    pretrained: bool = False,
    **kwargs: Any,
) -> Backend:
    """A PyTorch backend (``model`` + ``checkpoint`` or ``pretrained``), an ONNX one (``onnx``) or an OpenVINO one
    (``openvino``: the IR folder maedet-export --openvino writes).

    ``checkpoint`` may be a converted detector folder (``maedet-convert ... --model NAME_gfl``), which also
    names the model; ``num_classes`` defaults to 80, or the folder's.
    """
    if openvino is not None:
        if checkpoint is not None or pretrained or onnx is not None:
            raise MaeDetError("an OpenVINO IR carries its own weights: give --openvino without --checkpoint or --onnx.")
        if not Path(openvino).is_dir():
            raise MaeDetError(
                f"OpenVINO IR folder {str(openvino)!r} does not exist (maedet-export NAME --openvino DIR)."
            )
        return OpenVinoBackend(openvino)
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
