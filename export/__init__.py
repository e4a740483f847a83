"""Export MAE-DET (and any timm) backbones to ONNX (fp32, fp16, INT8 Q/DQ) and TensorRT engines, each checked.

    from maedet.export import export_onnx, build_engine, check_engine

    res = export_onnx("maedet_m", "maedet_m.onnx", input_size=(640, 640))  # or: options=ExportOptions(...)
    res.check["c5"].cosine, res.check.passed  # ONNX Runtime CPU vs PyTorch fp32

    # On a CUDA machine with `pip install 'maedet[gpu]'` (TensorRT + Polygraphy):
    build = build_engine("maedet_m.onnx", "maedet_m.engine", precision=res.precision, metadata=res.metadata)
    check_engine(build.engine_path, "maedet_m.onnx").passed  # TensorRT vs ONNX Runtime CPU

Whole GFocalV2 detectors (``maedet_m_gfl``...) export with NMS in the graph: ``export_detector_onnx`` (see
docs/detector.md).

``build_engine`` returns an :class:`EngineBuild` (TensorRT version, GPU, profiles, build time) and writes the engine
with a JSON sidecar; ``check_engine`` runs the engine and ONNX Runtime on the same synthetic images and judges them
by ``ENGINE_TOLERANCES``. Running exported files (ONNX Runtime sessions, TensorRT engines) goes through
:mod:`maedet.runtime`.
"""

from maedet.runtime import OrtRunner, TrtEngine, TrtRunner, ort_session, run_session

from .check import ENGINE_TOLERANCES, TOLERANCES, CheckReport, OutputCheck, Tolerance, check_engine
from .detector_onnx import DetectorExportResult, export_detector_onnx
from .errors import ExportError, MissingDependencyError
from .metadata import read_metadata
from .model_source import ModelSource, resolve_model
from .onnx_export import ExportOptions, ExportResult, export_onnx
from .tensorrt import EngineBuild, ProfileShapes, build_engine, profile_shapes

__all__ = [
    "ENGINE_TOLERANCES",
    "TOLERANCES",
    "CheckReport",
    "DetectorExportResult",
    "EngineBuild",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "MissingDependencyError",
    "ModelSource",
    "OrtRunner",
    "OutputCheck",
    "ProfileShapes",
    "Tolerance",
    "TrtEngine",
    "TrtRunner",
    "build_engine",
    "check_engine",
    "export_detector_onnx",
    "export_onnx",
    "ort_session",
    "profile_shapes",
    "read_metadata",
    "resolve_model",
    "run_session",
]
