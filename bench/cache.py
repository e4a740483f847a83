"""Exported ONNX files, TensorRT engines and OpenVINO INT8 models kept between runs, keyed by what changes them.

The first run of a model on an ONNX Runtime or TensorRT backend exports it (and builds its engine) with
:mod:`maedet.export`; later runs find the files here, so reruns are fast. A cached file is never trusted by its
name alone: beside each goes a record (``<file>.record.json``) of what it holds (model, structure key, precision,
input) and its SHA-256. A file whose record is missing or different, or whose bytes no longer match (another
model's file copied over it, a damaged or truncated file), is logged and rebuilt, never timed under a wrong name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.export import ExportOptions, ExportRequest, build_engine, export_onnx
from maedet.fileio import atomic_write_text
from maedet.jsonio import JsonError, read_json
from maedet.runtime import TrtEngine, gpu_identity, require_tensorrt

from .errors import BackendUnavailable, BenchError
from .models import ModelSpec

__all__ = ["INT8_CALIB_BATCHES", "ONNX_OPSET", "RECORD_FORMAT", "ArtifactCache", "default_cache_dir", "record_path"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
INT8_CALIB_BATCHES = 4  # synthetic calibration: timing does not depend on calibration quality
RECORD_FORMAT = "maedet-bench-cache/1"
_MAX_RECORD_BYTES = 2**20  # a record is a few hundred bytes


def record_path(artifact: str | os.PathLike[str]) -> Path:
    """Where the record of a cached file lives: ``<file>.record.json`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".record.json")


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record beside a cached file, or None when there is no readable one (a FIFO or device there is not
    opened for reading: it would block forever)."""
    try:
        data = read_json(record_path(path), "cache record", max_bytes=2**20)
    except JsonError:
        return None
    return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None


def _onnx_identity(path: Path) -> str:
    """What a mismatched ONNX file says it holds, for the log line ('' when it says nothing readable)."""
    from maedet.export import read_metadata

    try:
        name = read_metadata(path).get("model_name")
    except (MaeDetError, OSError, ValueError, RuntimeError, RecursionError):
        return "; it is not a readable ONNX file"
    return f"; its metadata names {str(name)!r}" if name else ""


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
        expected = {
            "model": spec.label,
            "key": spec.cache_key(),
            "precision": precision,
            "int8_mode": int8_mode,
            "input": [batch, 3, height, width],
        }
        if self._reusable(path, expected, describe=_onnx_identity):
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
            calib_batches=INT8_CALIB_BATCHES if precision == "int8" else None,
            int8_mode=(int8_mode or "portable") if precision == "int8" else "portable",
        )
        model: Any = module_factory() if module_factory is not None else spec.name
        try:
            with _quiet_logging():
                if spec.detector:
                    self._export_detector(spec, model, path, options)
                else:
                    export_onnx(model, path, options)
        except MaeDetError as exc:
            raise BackendUnavailable(f"export to ONNX failed: {exc}") from None
        self._write_record(path, expected)
        return path

    def _reusable(self, path: Path, expected: dict[str, Any], describe: Callable[[Path], str] = lambda _: "") -> bool:
        """Whether the cached ``path`` is the file recorded for ``expected``; if it exists but is not, say why in
        the log and remove it (with its record), so the caller rebuilds it."""
        if not (path.exists() or path.is_symlink()):
            return False
        problem = self._problem(path, expected)
        if problem is None:
            return True
        logger.warning("the cached %s %s%s; rebuilding it.", path.name, problem, describe(path))
        try:
            path.unlink()
            record_path(path).unlink(missing_ok=True)
        except OSError as exc:
            raise BackendUnavailable(
                f"the cached {str(path)!r} {problem} and cannot be removed ({exc.strerror}); delete it by hand."
            ) from None
        return False

    @staticmethod
    def _problem(path: Path, expected: dict[str, Any]) -> str | None:
        """Why the cached file cannot be reused, or None when its record and its bytes match."""
        if path.is_symlink() or not path.is_file():
            return "is not a regular file"
        record = _read_record(path)
        if record is None:
            return "has no readable record of what it holds"
        for key, value in expected.items():
            if record.get(key) != value:
                return f"was recorded with {key} {record.get(key)!r}, not {value!r}"
        try:
            digest = _sha256(path)
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if digest != record.get("sha256"):
            return "does not match the file that was exported (its SHA-256 differs)"
        return None

    @staticmethod
    def _write_record(path: Path, expected: dict[str, Any]) -> None:
        record = {"format": RECORD_FORMAT, **expected, "sha256": _sha256(path)}
        atomic_write_text(record_path(path), json.dumps(record, indent=1, sort_keys=True) + "\n")

    @staticmethod
    def _export_detector(spec: ModelSpec, source: Any, path: Path, options: ExportOptions) -> None:
        """A whole detector (``+nms``: with NMS in the graph), from the bench's own deploy form when given."""
        from .detectors import bench_detector

        detector = getattr(source, "detector", None) or bench_detector(spec.name, structure=spec.structure)
        export_onnx(detector, path, dataclasses.replace(options, structure=None, outputs="features", nms=spec.nms))

    def nncf_ir(self, fp32_onnx: Path, calib: str | None = None, calib_identity: str | None = None) -> Path:
        """NNCF's INT8 OpenVINO IR of a cached fp32 ONNX file, quantized on first use with the calibration the
        exporter's INT8 files get here: INT8_CALIB_BATCHES synthetic batches, or the exporter's sample of the
        ``calib`` folder (``calib_identity``: its files' names, sizes and times, hashed).

        The record ties the IR to the fp32 file (its SHA-256), the calibration and its own weights file (``.bin``).
        """
        from maedet.export.openvino import write_nncf_ir
        from maedet.openvino_runtime import require_openvino

        try:
            ov = require_openvino()
            calibration = hashlib.sha1(str(calib_identity).encode()).hexdigest()[:8] if calib else "synthetic"
            name = f"{fp32_onnx.stem}-nncf{calibration}-ov{ov.__version__.split('-')[0]}"
            path = self.root / name / "model.xml"
            bin_path = path.with_suffix(".bin")
            bin_sha = _sha256(bin_path) if bin_path.is_file() else None
            source = (_read_record(fp32_onnx) or {}).get("sha256")
            expected = {"onnx_sha256": source, "calibration": calib_identity, "bin_sha256": bin_sha}
            if bin_sha is not None and self._reusable(path, expected):
                return path
            logger.debug("quantizing %s with NNCF", fp32_onnx.name)
            with _quiet_logging():
                write_nncf_ir(fp32_onnx, path.parent, calib=calib,
                              calib_batches=None if calib else INT8_CALIB_BATCHES)  # fmt: skip
            self._write_record(path, {**expected, "bin_sha256": _sha256(bin_path)})
            return path
        except MaeDetError as exc:
            raise BackendUnavailable(str(exc)) from None

    def exported(self, stem: str, model: Any, request: ExportRequest, identity: Mapping[str, Any]) -> Path:
        """The cached ONNX file ``export_onnx(model, ..., request)`` writes, exported on first use.

        ``identity`` is everything the file depends on besides the request (the weights' digest, the calibration
        images...): with the request and the versions it keys the file, so a retrained detector, other calibration
        images or another maedet or torch get a new file. ``stem`` starts the file's name (readable, not a key).
        """
        import torch

        from maedet import __version__

        key = {**identity, "request": repr(request), "torch": torch.__version__, "maedet": __version__}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        safe_stem = re.sub(r"[^\w.+-]", "_", stem)
        path = self.root / f"{safe_stem}-{digest[:12]}.onnx"
        expected = {"made_as": stem, "key_sha256": digest}
        if self._reusable(path, expected, describe=_onnx_identity):
            return path
        self._prepare_root()
        logger.debug("exporting %s to %s", stem, path.name)
        try:
            with _quiet_logging():
                export_onnx(model, path, request)
        except MaeDetError as exc:
            raise BackendUnavailable(f"export to ONNX failed: {exc}") from None
        self._write_record(path, expected)
        return path

    def engine(self, onnx_path: Path, precision: str) -> TrtEngine:
        """A loaded TensorRT engine for ``onnx_path``, built (with maedet.export) on first use.

        Engines only run on the TensorRT version and GPU model that built them, so both are in the file name;
        the exporter's sidecar check refuses a mismatched engine with one sentence. The bench's record ties the
        engine to the ONNX file it was built from (its SHA-256), so rebuilding that file rebuilds the engine.
        """
        try:
            trt = require_tensorrt()
            gpu = "".join(c if c.isalnum() else "_" for c in (gpu_identity()[0] or "nogpu"))
            path = self.root / f"{onnx_path.stem}-trt{trt.__version__}-{precision}-{gpu}.engine"
            source = _read_record(onnx_path) or {}
            expected = {"onnx_sha256": source.get("sha256"), "precision": precision, "tensorrt": trt.__version__}
            if not self._reusable(path, expected):
                logger.debug("building TensorRT %s engine from %s", precision, onnx_path.name)
                build_engine(onnx_path, path, precision=precision, timing_cache=self.root / "trt.cache")
                self._write_record(path, expected)
            return TrtEngine.load(path)
        except MaeDetError as exc:
            raise BackendUnavailable(str(exc)) from None
