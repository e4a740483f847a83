"""The profiled latency table's file format: one JSON object, written atomically, read back checked.

``maedet-bench profile`` writes it and anything may read it (the search, ``--info``, another machine), so every
field is checked on reading, and anything foreign, malformed or of an older format is refused in one sentence.
This module knows the file; :mod:`.profiled` knows how a table predicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError

from .detector import check_detector_section
from .detector_memory import check_table_memory
from .pieces import FEATURE_NAMES, regime_key
from .table_numbers import BOUND, table_coefficients, table_number

__all__ = ["MAX_TABLE_BYTES", "TABLE_FORMAT", "check_table", "read_table", "table_document", "write_table"]

TABLE_FORMAT = "maedet-latency-table/2"
FIXED_ROLES = ("stem", "pw", "pool", "add")  # plus "k{k}s{s}" for every k×k conv at stride s
MAX_TABLE_BYTES = 64 * 2**20
MAX_TARGET_VALUE = 2**16  # a target's batch and input side: larger ones overflow the cost features' float64
VALIDATION_FIGURES = ("count", "rmspe_pct", "within_5pct", "within_10pct", "spearman_rho", "wall_s")


def table_document(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of a table from its fields (a LatencyTable's), in file order."""
    document = {"format": TABLE_FORMAT, **{k: fields[k] for k in ("created", "target", "machine", "versions")}}
    document["features"] = list(FEATURE_NAMES)
    rest = ("model", "calibration", "measurement", "references", "validation", "samples")
    document |= {k: fields[k] for k in rest}
    optional = ("detector", "memory")  # written only when profiled (--detector, --memory)
    return document | {k: fields[k] for k in optional if fields.get(k)}


def write_table(path: str | os.PathLike[str], document: Mapping[str, Any]) -> Path:
    from maedet.fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n", "latency table")


def read_table(path: Path) -> Any:
    """The parsed JSON of a table file (bounded in size); :func:`check_table` says whether it is one."""
    from maedet.jsonio import read_json

    return read_json(path, "latency table", max_bytes=MAX_TABLE_BYTES)


def check_table(data: Any, where: str) -> dict[str, Any]:
    """A parsed table's fields, checked (LatencyTable's keyword arguments); anything wrong is one sentence."""
    if not isinstance(data, Mapping) or "format" not in data:
        raise MaeDetError(f"{where} is not a maedet latency table (no 'format' field).")
    if data["format"] != TABLE_FORMAT:
        hint = "; profile the target again" if str(data["format"]).startswith("maedet-latency-table/") else ""
        raise MaeDetError(f"{where} has format {data['format']!r}; this maedet reads {TABLE_FORMAT!r}{hint}.")
    target = _check_target(data.get("target"), where)
    if data.get("features") != list(FEATURE_NAMES):
        raise MaeDetError(f"{where} uses features {data.get('features')!r}, not {list(FEATURE_NAMES)}.")
    return {
        "target": target,
        "model": _check_model(data.get("model"), where),
        "calibration": _check_calibration(data.get("calibration"), where),
        "machine": dict(_mapping(data, "machine", where)),
        "versions": dict(_mapping(data, "versions", where)),
        "measurement": dict(_mapping(data, "measurement", where)),
        "samples": _check_samples(data.get("samples"), where),
        "validation": _check_validation(_mapping(data, "validation", where), where),
        "references": _check_references(data.get("references"), where),
        "memory": check_table_memory(data.get("memory"), where),
        "created": str(data.get("created", "")),
        "detector": check_detector_section(data.get("detector"), where),
    }


def _mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise MaeDetError(f"{where}: {key!r} must be an object.")
    return value


def _check_calibration(calibration: Any, where: str) -> dict[str, float]:
    calibration = calibration or {"scale": 1.0, "offset_ms": 0.0}
    if not isinstance(calibration, Mapping) or not all(table_number(v) for v in calibration.values()):
        raise MaeDetError(f"{where} has a malformed 'calibration' object (names → finite numbers {BOUND}).")
    if not calibration.get("scale", 1.0) > 0:  # a zero or negative scale would let every candidate fit a budget
        raise MaeDetError(f"{where}: calibration 'scale' must be a positive number, got {calibration['scale']!r}.")
    return {k: float(v) for k, v in calibration.items()}


def _check_references(refs: Any, where: str) -> dict[str, float]:
    refs = refs or {}
    if not isinstance(refs, Mapping) or not all(table_number(v) and v > 0 for v in refs.values()):
        raise MaeDetError(f"{where} has a malformed 'references' object (names → positive ms {BOUND}).")
    return {str(k): float(v) for k, v in refs.items()}


def _check_target(target: Any, where: str) -> dict[str, Any]:
    if not isinstance(target, Mapping):
        raise MaeDetError(f"{where} has no 'target' object.")
    for key in ("batch", "input_size"):
        value = target.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TARGET_VALUE:
            raise MaeDetError(
                f"{where}: target field {key!r} must be an integer from 1 to {MAX_TARGET_VALUE:,}, got {value!r}."
            )
    threads = target.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise MaeDetError(f"{where}: target field 'threads' must be a positive integer, got {threads!r}.")
    return dict(target)


def _check_samples(samples: Any, where: str) -> list[dict[str, Any]]:
    """The timed samples: a list of objects (what ``bench profile`` wrote), or nothing."""
    if samples is None:
        return []
    if not isinstance(samples, list) or not all(isinstance(s, Mapping) for s in samples):
        raise MaeDetError(f"{where}: 'samples' must be a list of objects, got {type(samples).__name__}.")
    return [dict(s) for s in samples]


def _check_validation(validation: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The held-out figures ``--info`` prints: each a finite number when present, the unscaled ones too."""
    unscaled = validation.get("unscaled") or {}
    if not isinstance(unscaled, Mapping):
        raise MaeDetError(f"{where}: the validation's 'unscaled' figures must be an object.")
    for scope, figures in (("validation", validation), ("unscaled validation", unscaled)):
        for key in VALIDATION_FIGURES:
            if key in figures and not table_number(figures[key]):
                raise MaeDetError(
                    f"{where}: {scope} figure {key!r} must be a finite number {BOUND}, got {figures[key]!r}."
                )
    return dict(validation)


def valid_role(role: Any) -> bool:
    """``stem``, ``pw``, ``pool``, ``add``, or ``k{k}s{s}`` with an odd kernel and a positive stride."""
    if role in FIXED_ROLES:
        return True
    if not isinstance(role, str) or not role.startswith("k") or "s" not in role:
        return False
    k, _, s = role[1:].partition("s")
    return k.isdigit() and s.isdigit() and int(k) % 2 == 1 and int(s) >= 1


def _check_model(model: Any, where: str) -> dict[str, Any]:
    if not isinstance(model, Mapping) or not isinstance(model.get("roles"), Mapping) or not model["roles"]:
        raise MaeDetError(f"{where} has no fitted 'model' (an object with 'roles').")
    block = model.get("channel_block", 1)
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
        raise MaeDetError(f"{where}: the model's 'channel_block' must be an integer from 1 to 1024, got {block!r}.")
    roles: dict[str, list[float]] = {}
    for role, coefs in model["roles"].items():
        if not valid_role(role):
            raise MaeDetError(f"{where}: unknown operator role {role!r} in the model.")
        roles[role] = _coefficients(coefs, role, where)
    for needed in ("stem", "pw"):
        if needed not in roles:
            raise MaeDetError(f"{where}: the model has no {needed!r} role.")
    checked = {**{k: v for k, v in model.items() if k != "roles"}, "channel_block": block, "roles": roles}
    if "regimes" in model:
        checked["regimes"] = _check_regimes(model["regimes"], roles, where)
    return checked


def _check_regimes(regimes: Any, roles: Mapping[str, Any], where: str) -> dict[str, list[float]]:
    """A role's models per feature size (``pw@160``): each of a role the model has, at a size from 1 to 65536."""
    if not isinstance(regimes, Mapping):
        raise MaeDetError(f"{where}: the model's 'regimes' must be an object.")
    checked: dict[str, list[float]] = {}
    for key, coefs in regimes.items():
        role, _, size = str(key).rpartition("@")
        if role not in roles or not (size.isascii() and size.isdigit() and len(size) <= 5 and 1 <= int(size) <= 65536):
            raise MaeDetError(f"{where}: {key!r} in the model's 'regimes' is not ROLE@SIZE of a role of the model.")
        checked[regime_key(role, int(size))] = _coefficients(coefs, key, where)
    return checked


def _coefficients(coefs: Any, name: Any, where: str) -> list[float]:
    return table_coefficients(coefs, len(FEATURE_NAMES), f"{where}: the model of {name!r}")
