"""Export MAE-DET (and any timm) backbones to ONNX (fp32, fp16, INT8 Q/DQ) and TensorRT engines, each checked.

from maedet.export import export_onnx
res = export_onnx("maedet_m", "maedet_m.onnx", input_size=(640, 640))
res.check["c5"].cosine
"""

from .check import TOLERANCES, CheckReport, OutputCheck, Tolerance
from .errors import ExportError, MissingDependencyError
from .metadata import read_metadata
from .model_source import ModelSource, resolve_model
from .onnx_export import ExportResult, export_onnx

__all__ = [
    "TOLERANCES",
    "CheckReport",
    "ExportError",
    "ExportResult",
    "MissingDependencyError",
    "ModelSource",
    "OutputCheck",
    "Tolerance",
    "export_onnx",
    "read_metadata",
    "resolve_model",
]
