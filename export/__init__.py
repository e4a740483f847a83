"""Export MAE-DET (and any timm) backbones and GFocalV2 detectors to ONNX (fp32, fp16, INT8 Q/DQ) and TensorRT
engines, each checked — through one pipeline (see docs/design.md, 'Export and runtimes').

    from maedet.export import export_onnx, build_engine, check_engine

    res = export_onnx("maedet_m", "maedet_m.onnx", input_size=(640, 640))  # or: ExportRequest(...)
    res.check["c5"].cosine, res.check.passed  # ONNX Runtime CPU vs PyTorch fp32
    det = export_onnx("maedet_m_gfl", "det.onnx", checkpoint="latest.pth", nms=True)  # NMS in the graph

    # On a CUDA machine with `pip install 'maedet[gpu]'` (TensorRT + Polygraphy):
    build = build_engine("maedet_m.onnx", "maedet_m.engine", precision=res.precision, metadata=res.metadata)
    check_engine(build.engine_path, "maedet_m.onnx").passed  # TensorRT vs ONNX Runtime CPU

One request (:class:`ExportRequest`) says what to export; :data:`APPLIES` says which option applies to which kind
of model (backbone, detector); a kind is a strategy (:mod:`maedet.export.kinds`). ``build_engine`` returns an
:class:`EngineBuild` and writes the engine with a JSON sidecar; ``check_engine`` runs the engine and ONNX Runtime
on the same synthetic images and judges them by ``ENGINE_TOLERANCES`` (or, for files that end in detections, by
their detections). Running exported files goes through :mod:`maedet.runtime`.
"""

from maedet.runtime import OrtRunner, TrtEngine, TrtRunner, ort_session, run_session

from .check import ENGINE_TOLERANCES, TOLERANCES, CheckReport, OutputCheck, Tolerance
from .engine_check import check_engine
from .errors import ExportError, MissingDependencyError
from .metadata import read_metadata
from .model_source import ModelSource, resolve_model
from .pipeline import ExportResult, export_detector_onnx, export_onnx
from .request import APPLIES, ExportRequest
from .tensorrt import EngineBuild, ProfileShapes, build_engine, profile_shapes

ExportOptions = ExportRequest  # the earlier name, kept for callers

__all__ = [
    "APPLIES",
    "ENGINE_TOLERANCES",
    "TOLERANCES",
    "CheckReport",
    "EngineBuild",
    "ExportError",
    "ExportOptions",
    "ExportRequest",
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
