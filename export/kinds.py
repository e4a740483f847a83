"""The per-kind strategy of the one export pipeline: what a backbone, a detector (or the next kind) supplies.

The pipeline (:mod:`maedet.export.pipeline`) traces, lowers, checks and writes every file the same way; a kind
supplies only what differs: the module to trace and its example input, the output names and axes, its metadata
keys, the optional post-processing graph (a detector's NMS), the calibration input form, and the parity check.
A new kind is one :class:`ModelKind` subclass, a column in :data:`~maedet.export.request.APPLIES`, and an entry in
:func:`maedet.export.pipeline.kind_of`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

from .request import ExportRequest

__all__ = ["ModelKind", "Prepared"]


@dataclass
class Prepared:
    """A model ready to trace at the export size, and what the pipeline needs to know about it."""

    name: str  # for the log and the metadata
    module: nn.Module  # the network, traced as one graph (fp16 / INT8 lower this part only)
    example: torch.Tensor  # the input as the file takes it
    reference: tuple[torch.Tensor, ...]  # the module's outputs for ``example`` (the parity check's reference)
    output_names: list[str]  # the network's outputs
    mean: tuple[float, ...]
    std: tuple[float, ...]
    handle: Any = None  # the kind's own object (a ModelSource, a GFocalV2)
    axes: dict[str, dict[int, str]] | None = None  # dynamic axes, when not the default (input and spatial outputs)
    spatial_outputs: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.example.shape[2]), int(self.example.shape[3])


class ModelKind(ABC):
    """One kind of model: backbone, detector, ..."""

    name: str
    default_size: tuple[int, int]
    min_opset: int = 0  # the oldest opset its graph can be written in (0: whatever the exporter writes)

    @abstractmethod
    def check_model(self, model: Any, request: ExportRequest) -> None:
        """Refuse what this model cannot do with this request, before loading any weights."""

    @abstractmethod
    def prepare(self, model: Any, request: ExportRequest, size: tuple[int, int]) -> Prepared:
        """Resolve the model and run it once at ``size`` (a size it cannot run is one sentence)."""

    @abstractmethod
    def metadata(self, prepared: Prepared, request: ExportRequest) -> dict[str, Any]:
        """This kind's own metadata keys (beside those every file carries)."""

    @abstractmethod
    def check(
        self,
        prepared: Prepared,
        request: ExportRequest,
        file_bytes: bytes,
        network_bytes: bytes,
        runtime: str = "onnxruntime",
    ) -> Any:
        """The parity check of the written file against PyTorch in ``runtime`` (``onnxruntime`` for the ONNX file,
        ``openvino`` for the IR made from it): a report with ``passed`` and ``to_dict``."""

    def post_graph(self, prepared: Prepared, request: ExportRequest) -> onnx.ModelProto | None:
        """The graph joined after the network (kept fp32), or None."""
        return None

    def outputs(self, prepared: Prepared, request: ExportRequest) -> list[str]:
        """The exported file's output names."""
        return list(prepared.output_names)

    def weights_tag(self, prepared: Prepared, request: ExportRequest) -> str | None:
        """The weights' name when they come from the model's own source (timm's pretrained tag), else None."""
        return None

    def to_input(self, prepared: Prepared, images: np.ndarray) -> np.ndarray:
        """Normalised float images (calibration) → the file's input form."""
        return images
