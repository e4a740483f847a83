"""Exported ONNX files and TensorRT engines kept between runs, keyed by everything that changes them.

The first run of a model on an ONNX Runtime or TensorRT backend exports it (and builds its engine) with
:mod:`maedet.export`; later runs find the files here, so reruns are fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.export import ExportOptions, TrtEngine, build_engine, export_onnx
from maedet.export.runtime import gpu_identity, require_tensorrt

from .errors import BackendUnavailable, BenchError
from .models import ModelSpec

__all__ = ["INT8_CALIB_BATCHES", "ONNX_OPSET", "ArtifactCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
INT8_CALIB_BATCHES = 4  # synthetic calibration: timing does not depend on calibration quality


def default_cache_dir() -> Path:
    """$MAEDET_CACHE/bench, else $XDG_CACHE_HOME/maedet/bench, else ~/.cache/maedet/bench."""
    if os.environ.get("MAEDET_CACHE"):
        return Path(os.environ["MAEDET_CACHE"]).expanduser() / "bench"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "maedet" / "bench"


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The exporter and ONNX Runtime's quantizer log advice on every export; keep the bench's output clean."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


class ArtifactCache:
    """Exported ONNX files and TensorRT engines under ``root``, named by model, input, batch and precision."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create cache folder {str(self.root)!r}: {exc.strerror}.") from None

    def onnx_path(
        self, spec: ModelSpec, precision: str, batch: int, height: int, width: int, int8_mode: str | None = None
    ) -> Path:
        import torch

        from maedet import __version__

        tag = f"opset{ONNX_OPSET}-torch{torch.__version__}-maedet{__version__}"
        if precision == "int8":
            tag += f"-calib{INT8_CALIB_BATCHES}"
            precision = f"int8{int8_mode}" if int8_mode else precision
        digest = hashlib.sha1(tag.encode()).hexdigest()[:8]
        return self.root / f"{spec.cache_key()}-{batch}x3x{height}x{width}-{precision}-{digest}.onnx"

    def onnx(
        self,
        spec: ModelSpec,
        precision: str,
        batch: int,
        height: int,
        width: int,
        module_factory: Callable[[], Any] | None = None,
        int8_mode: str | None = None,
    ) -> Path:
        """The cached ONNX file for this model and input, exported (C2..C5 features) on first use.

        ``module_factory`` returns the exporter's resolved deploy form for this spec (shared with the PyTorch
        backends, so the model is built once); without it the exporter builds the model from its name. ``int8_mode``:
        the exporter's INT8 layout ('cpu' is ONNX Runtime CPU's fast layout, 'portable' is what TensorRT reads).
        """
        path = self.onnx_path(spec, precision, batch, height, width, int8_mode)
        if path.is_file():
            return path
        self._prepare_root()
        logger.debug("exporting %s to ONNX (%s, %d×3×%d×%d)", spec.label, precision, batch, height, width)
        options = ExportOptions(
            input_size=(height, width),
            batch=batch,
            outputs="features",
            precision=precision,
            check=False,
            opset=ONNX_OPSET,
            structure=spec.structure if module_factory is None and spec.name == "maedet" else None,
            calib_batches=INT8_CALIB_BATCHES if precision == "int8" else 8,
            int8_mode=int8_mode or "portable",
        )
        model: Any = module_factory() if module_factory is not None else spec.name
        try:
            with _quiet_logging():
                if spec.detector:
                    return self._export_detector(spec, model, path, options)
                return Path(export_onnx(model, path, options).path)
        except MaeDetError as exc:
            raise BackendUnavailable(f"export to ONNX failed: {exc}") from None

    @staticmethod
    def _export_detector(spec: ModelSpec, source: Any, path: Path, options: ExportOptions) -> Path:
        """A whole detector (``+nms``: with NMS in the graph), from the bench's own deploy form when given."""
        from maedet.export.detector_onnx import export_detector_onnx

        from .detectors import bench_detector

        detector = getattr(source, "detector", None) or bench_detector(spec.name)
        result = export_detector_onnx(
            detector,
            path,
            input_size=options.input_size,
            batch=options.batch,
            nms=spec.nms,
            precision=options.precision,
            calib_batches=options.calib_batches,
            int8_mode=options.int8_mode,
            opset=options.opset,
            check=False,
        )
        return Path(result.path)

    def engine(self, onnx_path: Path, precision: str) -> TrtEngine:
        """A loaded TensorRT engine for ``onnx_path``, built (with maedet.export) on first use.

        Engines only run on the TensorRT version and GPU model that built them, so both are in the file name;
        the exporter's sidecar check refuses a mismatched engine with one sentence.
        """
        try:
            trt = require_tensorrt()
            gpu = "".join(c if c.isalnum() else "_" for c in (gpu_identity()[0] or "nogpu"))
            path = self.root / f"{onnx_path.stem}-trt{trt.__version__}-{precision}-{gpu}.engine"
            if not path.is_file():
                logger.debug("building TensorRT %s engine from %s", precision, onnx_path.name)
                build_engine(onnx_path, path, precision=precision, timing_cache=self.root / "trt.cache")
            return TrtEngine.load(path)
        except MaeDetError as exc:
            raise BackendUnavailable(str(exc)) from None
