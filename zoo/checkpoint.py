"""Reading untrusted checkpoints without running any code from them.

A ``.pth`` file is a pickle, and a pickle may name any Python function to call while it loads. So checkpoints are
read as safetensors or with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.
mmdetection's checkpoints also keep numpy scalars (and their dtypes) in ``meta``: those types are allow-listed with
torch's safe-globals mechanism, which admits exactly the named classes and still runs nothing else. A file that
names anything more is refused in one sentence that names what it tried to load (``posix.system`` and the like).

What loads is checked too: every tensor must be dense and hold data (no meta or sparse tensors, which no model can
load), keyed by text; and :func:`check_state_dict_matches` compares shapes and kinds of number with the model's
for every key, so a bool, integer or complex tensor never turns silently into float weights.

A checkpoint may also be a converted folder (``config.json`` + ``model.safetensors``, what ``maedet-convert``
writes). This module is the one reader for backbones and detectors: :func:`model_tensors` and
:func:`unwrap_state_dict` take the model's tensors out of a training checkpoint (``state_dict`` / ``model``
containers, DDP's ``module.`` prefix, a detector's ``backbone.``; every prefix is named once, below);
:func:`compare_keys` compares a mapped state dict's keys and shapes with a model's, and :func:`mismatch_sentence`
says in one sentence how it fails to fit: counts and a few example keys of each kind. :func:`download_checkpoint` is
the one download path for published checkpoints (the authors' URL is :data:`AUTHORS_URL`).
"""

from __future__ import annotations

import http.client
import io
import os
import pickle
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maedet.errors import MaeDetError
from maedet.memory import MemoryEstimateError, check_fits

__all__ = [
    "AUTHORS_TAG",
    "AUTHORS_URL",
    "BACKBONE_PREFIXES",
    "DETECTOR_PARTS",
    "FOLDER_WEIGHT_FILES",
    "CheckpointError",
    "KeyReport",
    "cache_file_name",
    "check_number_kinds",
    "check_state_dict_matches",
    "check_tensors",
    "classifier_classes",
    "compare_keys",
    "download_checkpoint",
    "load_checkpoint",
    "load_error_keys",
    "mismatch_sentence",
    "model_tensors",
    "preview",
    "safe_numpy_globals",
    "unwrap_state_dict",
]

_REASON_MARKER = "WeightsUnpickler error:"
# The weight files a timm folder (save_for_hf, maedet-convert, a hub snapshot) may hold, in the order timm prefers.
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
# Training checkpoints keep the weights under one of these (mmdetection: state_dict; many trainers: model).
_CONTAINER_KEYS = ("state_dict", "model")
# What torch's weights_only unpickler raises on a pickle cut short (it unpacks fixed-size fields from short reads).
_TRUNCATED = (struct.error, IndexError, EOFError)
_DDP_PREFIX = "module."
# How much more a zip checkpoint may declare than its own size (torch.save stores entries uncompressed: ~1×).
MAX_EXPANSION = 4
_BACKBONE_PREFIX = "backbone."
# Where a backbone's keys may sit in a checkpoint: the authors' mmdetection detector (backbone.body.), ours and
# mmdetection's ResNets (backbone.), a bare TinyNAS body, DDP. The first that matches is taken off.
BACKBONE_PREFIXES = ("backbone.body.", _BACKBONE_PREFIX, "body.", _DDP_PREFIX)
# The other parts of a detector checkpoint (mmdetection's and ours), left out when a backbone is loaded from it.
DETECTOR_PARTS = ("neck.", "bbox_head.", "rpn_head.", "roi_head.")
# The authors' published MAE-DET GFocalV2 COCO detectors, one file per size (s, m, l), and timm's tag for them.
AUTHORS_URL = "https://idstcv.oss-cn-zhangjiakou.aliyuncs.com/LightNAS/detection/maedet-{}/latest.pth"
AUTHORS_TAG = "gflv2_coco"


class CheckpointError(MaeDetError):
    """A checkpoint that is missing, unreadable, unsafe, or not a state dict."""


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def safe_numpy_globals() -> list[Any]:
    """numpy scalars, ``numpy.dtype`` and its per-type classes, under both numpy 1 and numpy 2 module names.

    Files written under numpy 1 name the scalar constructor ``numpy.core.multiarray.scalar``; under numpy 2 it is
    ``numpy._core.multiarray.scalar``. Object dtypes are left out: nothing in a state dict's metadata needs them.
    """
    scalar = _numpy_scalar()
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"] if code != "O"}
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *sorted(dtype_classes, key=lambda cls: cls.__name__),
    ]


def _blocked_globals(path: Path) -> list[str]:
    """The globals a refused file names, found without executing it: torch's scan of its zip format, else our own
    scan of the pickle's opcodes (never torch's error text)."""
    try:
        with torch.serialization.safe_globals(safe_numpy_globals()):
            found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (ValueError, RuntimeError, OSError, KeyError, pickle.UnpicklingError, *_TRUNCATED):
        # not torch's zip format (read the bare pickle's opcodes), or a zip whose data.pkl torch's scan cannot read
        # (protocol 0 or 1: the scan knows protocol 2 and up) -- the refusal must still be one sentence
        found = _bare_pickle_globals(path)
    return found


def _pickle_stream(path: Path) -> Any:
    """The pickle inside ``path``: the file itself, or the ``data.pkl`` member of torch's zip format."""
    import zipfile

    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if member is not None:
            return io.BufferedReader(archive.open(member))  # type: ignore[arg-type]
    return path.open("rb")


def _bare_pickle_globals(path: Path, limit: int = 64 * 2**20) -> list[str]:
    """The importable names a pickle refers to, read from its opcodes without running anything.

    torch's scan reads only its zip format with a pickle of protocol 2 or later, and its weights_only unpickler
    stops at the first opcode it does not support (protocol 5's FRAME, for one) before it meets a global; so a bare
    pickle's payload, or a zip's protocol-0 ``data.pkl``, is named from here.
    Names a state dict legitimately holds (torch's rebuild functions, OrderedDict, numpy scalars) are left out.
    """
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with _pickle_stream(path) as fh:
            while fh.tell() < limit and fh.peek(1):
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name in ("GLOBAL", "INST"):
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
    except (ValueError, EOFError, OSError, UnicodeDecodeError, KeyError, *_TRUNCATED):
        pass  # garbage after what was read (or an unreadable archive): name what was found
    harmless = {"collections.OrderedDict", "numpy.dtype", "numpy.core.multiarray.scalar"}
    harmless |= {"numpy._core.multiarray.scalar", "_codecs.encode"}
    return [n for n in dict.fromkeys(names) if n not in harmless and not n.startswith(("torch.", "numpy.dtypes."))]


def _reason(exc: BaseException) -> str:
    """One short line out of torch's multi-paragraph load errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if _REASON_MARKER in line:
            tail = line.split(_REASON_MARKER, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return tail[:200].rstrip(".")
    return (lines[0] if lines else type(exc).__name__)[:200].rstrip(".")


def _refusal(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    blocked = _blocked_globals(path)
    if blocked:
        return CheckpointError(
            f"checkpoint {path.name} was refused: it contains code-executing objects ({', '.join(blocked)}), which "
            "would run when loaded; only tensors, plain containers and numpy scalars are accepted from untrusted files."
        )
    return CheckpointError(
        f"checkpoint {path.name} was refused: it does not load as plain weights with weights_only=True "
        f"({_reason(exc)}); only tensors and plain containers are accepted from untrusted files."
    )


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path.name} is not a readable safetensors file ({exc}).") from None


def _check_declared_size(path: Path) -> None:
    """torch reads every entry of a zip checkpoint whole into memory, compressed or not: an 8 MB file may declare
    8 GB of zeros. torch.save writes entries uncompressed, so the sizes the zip's directory declares must stay
    near the file's own size, and fit in the memory this process can get, before anything is read."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
        size = path.stat().st_size
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # torch's own reader says what is wrong with it
    if declared > MAX_EXPANSION * size + 2**20:
        raise CheckpointError(
            f"checkpoint {path.name} declares {declared / 2**20:,.0f} MiB of data in a file of "
            f"{size / 2**20:,.1f} MiB; torch.save never compresses, so it is damaged or a decompression bomb, "
            "and it was not read."
        )
    try:
        check_fits(declared, f"reading checkpoint {path.name}")
    except MemoryEstimateError as exc:
        raise CheckpointError(str(exc)) from None


def _load_pickle(path: Path) -> Any:
    _check_declared_size(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(safe_numpy_globals()):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on its way to refusing them
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except _TRUNCATED:
        raise CheckpointError(
            f"checkpoint {path.name} is not a readable PyTorch checkpoint (it ends in the middle of its data: "
            "truncated or corrupt)."
        ) from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path.name} is not a readable PyTorch checkpoint ({_reason(exc)})."
        ) from None


def _tensor_problem(tensor: torch.Tensor) -> str | None:
    if tensor.is_meta:
        return "a meta tensor (shape only, no data)"
    if tensor.layout != torch.strided:
        return f"a {tensor.layout} tensor"
    if tensor.is_quantized:
        return f"a quantized {tensor.dtype} tensor"
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        return "NaN or infinite values"
    return None


_NON_FINITE = "NaN or infinite values"


def _place(where: str) -> str:
    return repr(where) if where else "its top level"


def check_tensors(checkpoint: Any, name: str) -> None:
    """At least one tensor; every tensor dense, with finite data; every mapping that holds tensors keyed by text.

    Walked without recursion, in the file's order, so a refusal names the first bad tensor. A checkpoint without
    tensors (``{"epoch": 3}``, an empty safetensors file) is refused here, so it can never stand for "no weights
    given" further on (where timm would fall back to downloading its default weights).
    """
    stack: list[tuple[Any, str]] = [(checkpoint, "")]
    visited: set[int] = set()
    tensors = 0
    while stack:
        item, where = stack.pop()
        if isinstance(item, torch.Tensor):
            tensors += 1
            problem = _tensor_problem(item)
            if problem == _NON_FINITE:
                raise CheckpointError(
                    f"checkpoint {name} holds {problem} in tensor {_place(where)}; such weights give NaN outputs, "
                    "so they are refused."
                )
            if problem:
                raise CheckpointError(
                    f"checkpoint {name} holds {problem} at {_place(where)}; only dense tensors with data can be loaded."
                )
            continue
        if not isinstance(item, (Mapping, list, tuple)) or id(item) in visited:
            continue
        visited.add(id(item))
        pairs = list(item.items() if isinstance(item, Mapping) else enumerate(item))
        for key, value in pairs:
            if isinstance(item, Mapping) and isinstance(value, torch.Tensor) and not isinstance(key, str):
                raise CheckpointError(
                    f"checkpoint {name} has a tensor under the key {key!r} (of type {type(key).__name__}) in "
                    f"{_place(where)}; keys must be text."
                )
        stack.extend((value, f"{where}.{key}" if where else str(key)) for key, value in reversed(pairs))
    if tensors == 0:
        raise CheckpointError(f"checkpoint {name} holds no tensors, so it has no weights to load.")


def _number_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def check_state_dict_matches(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every tensor of ``state_dict`` that the model has must match its shape and kind of number (float weights
    for float parameters, integers for integer buffers); missing and extra keys are the caller's business."""
    expected = model.state_dict()
    shared = [key for key in state_dict if key in expected]
    wrong = [
        f"{key} {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in shared
        if state_dict[key].shape != expected[key].shape
    ]
    if wrong:
        shown = ", ".join(wrong[:6]) + (f", … ({len(wrong) - 6} more)" if len(wrong) > 6 else "")
        raise CheckpointError(f"checkpoint does not match this structure: shape mismatch in {shown}.")
    check_number_kinds(state_dict, model)


def check_number_kinds(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every tensor of ``state_dict`` that the model has holds the model's kind of number (float weights for
    float parameters): ``load_state_dict`` would turn integers, bools or complex numbers into floats silently."""
    expected = model.state_dict()
    for key in (key for key in state_dict if key in expected):
        got, want = state_dict[key].dtype, expected[key].dtype
        if _number_kind(got) != _number_kind(want):
            raise CheckpointError(
                f"checkpoint tensor {key} has dtype {got}, but the model's is {want}: "
                f"{_number_kind(want)} values are needed there, not {_number_kind(got)}."
            )


def _folder_weights(folder: Path) -> Path:
    """The weight file of a converted folder (timm's hub layout), or one sentence saying it has none."""
    for name in FOLDER_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"folder {str(folder)!r} holds no weights file ({', '.join(FOLDER_WEIGHT_FILES)}); a converted folder "
        "(maedet-convert) has config.json + model.safetensors."
    )


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or a pickle restricted to tensors, plain containers and numpy scalars.

    ``path`` may also be a converted folder (config.json + model.safetensors): its weight file is read.
    """
    path = Path(path)
    if path.is_dir():
        path = _folder_weights(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file.")
    checkpoint = _load_safetensors(path) if path.suffix == ".safetensors" else _load_pickle(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path.name} holds a {type(checkpoint).__name__}, not a state dict.")
    check_tensors(checkpoint, path.name)
    return checkpoint


def model_tensors(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint, keyed as the model names them: the ``state_dict`` or ``model`` entry
    when there is one, DDP's ``module.`` prefix dropped; entries that are not tensors (epochs, configs) left out."""
    for key in _CONTAINER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    return {
        key.removeprefix(_DDP_PREFIX): value
        for key, value in checkpoint.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor)
    }


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's tensors out of a training checkpoint, and the keys left out (to be named in a log line).

    :func:`model_tensors`, and when some keys start with ``backbone.`` (a detector's checkpoint) just those, without
    the prefix: the neck and head of the detector are left out.
    """
    tensors = model_tensors(checkpoint)
    if not any(key.startswith(_BACKBONE_PREFIX) for key in tensors):
        return tensors, []
    kept = {key.removeprefix(_BACKBONE_PREFIX): v for key, v in tensors.items() if key.startswith(_BACKBONE_PREFIX)}
    return kept, sorted(key for key in tensors if not key.startswith(_BACKBONE_PREFIX))


def classifier_classes(state: Mapping[str, Any], key: str = "head.fc.weight") -> int:
    """How many classes the classifier of a (training) checkpoint has, 0 when it has none."""
    weight = unwrap_state_dict(state)[0].get(key)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim == 2 else 0


def preview(items: Sequence[str], limit: int = 4) -> str:
    """A few items and how many more: ``a, b, c, d, … (316 more)``."""
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def mismatch_sentence(
    lead: str, missing: Sequence[str], unexpected: Sequence[str], misshapen: Sequence[str]
) -> str | None:
    """``{lead}: 320 missing keys (…), 320 unexpected keys (…), 1 misshapen key (…).``, or None if all fit."""
    parts = [
        f"{len(keys)} {kind} key{'s' if len(keys) != 1 else ''} ({preview(keys)})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    return f"{lead}: {', '.join(parts)}." if parts else None


_MISSING_RE = re.compile(r"^Missing key\(s\) in state_dict:")
_UNEXPECTED_RE = re.compile(r"^Unexpected key\(s\) in state_dict:")
_QUOTED_RE = re.compile(r'"([^"]+)"')
_SIZE_RE = re.compile(
    r"^size mismatch for (?P<key>\S+): copying a param with shape torch\.Size\(\[(?P<got>[^\]]*)\]\) from "
    r"checkpoint, the shape in current model is torch\.Size\(\[(?P<want>[^\]]*)\]\)"
)


def load_error_keys(exc: RuntimeError) -> tuple[list[str], list[str], list[str]] | None:
    """(missing, unexpected, misshapen) out of ``load_state_dict(strict=True)``'s error, or None for other errors.

    torch reports every problem of a strict load in one RuntimeError, one line per kind (its format has been stable
    since torch 1.0); reading it back lets timm run the model's own key mapping and still be judged key by key.
    """
    missing: list[str] = []
    unexpected: list[str] = []
    misshapen: list[str] = []
    for line in (part.strip() for part in str(exc).split("\n\t")):
        if _MISSING_RE.match(line):
            missing += _QUOTED_RE.findall(line)
        elif _UNEXPECTED_RE.match(line):
            unexpected += _QUOTED_RE.findall(line)
        elif m := _SIZE_RE.match(line):
            misshapen.append(f"{m['key']} ({m['got']}) vs model ({m['want']})")
    return (missing, unexpected, misshapen) if missing or unexpected or misshapen else None


# ------------------------------------------------------------------------------------------- comparing keys
@dataclass(frozen=True)
class KeyReport:
    """How a mapped state dict fits a model: keys it lacks, keys it has too many, tensors of the wrong shape."""

    missing: list[str]
    unexpected: list[str]
    misshapen: list[str]

    def sentence(self, lead: str) -> str | None:
        """``{lead}: 2 missing keys (…), 1 unexpected key (…).``, or None when everything fits."""
        return mismatch_sentence(lead, self.missing, self.unexpected, self.misshapen)


def compare_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], *, any_shape: Sequence[str] = ()
) -> KeyReport:
    """Compare key sets and shapes directly (never torch's error text); ``any_shape`` keys may differ in shape."""
    return KeyReport(
        missing=[key for key in expected if key not in state],
        unexpected=[key for key in state if key not in expected],
        misshapen=[
            f"{key} {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
            for key in expected
            if key in state and key not in any_shape and state[key].shape != expected[key].shape
        ],
    )


# ------------------------------------------------------------------------------------------- downloading
def cache_file_name(architecture: str, tag: str, url: str) -> str:
    """The cached name of a published file: the authors publish every model as ``latest.pth``, so the model and
    tag are part of it (``maedet_s-gflv2_coco-latest.pth``); a backbone and its detector share the file."""
    from urllib.parse import urlparse

    return f"{architecture}-{tag}-{Path(urlparse(url).path).name}"


def download_checkpoint(url: str, file_name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A published checkpoint in torch's hub cache (``$TORCH_HOME/hub/checkpoints``, or ``cache_dir``), downloaded
    once: torch writes a temporary file and renames it, so nothing half-downloaded is ever taken for the file.
    Without network it is one sentence that says how to load a local copy instead."""
    from torch.hub import download_url_to_file, get_dir

    folder = Path(cache_dir) if cache_dir else Path(get_dir()) / "checkpoints"
    path = folder / file_name
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        download_url_to_file(url, str(path), progress=True)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, HTTPError and timeouts are OSErrors
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise CheckpointError(
            f"could not download {url} ({reason}); fetch it where there is network and give it with --checkpoint "
            "FILE (checkpoint=FILE to create_detector, pretrained_cfg_overlay=dict(file=FILE) to timm.create_model)."
        ) from None
    return path
