"""Which model arguments a folder's ``config.json`` may carry into ``timm.create_model``.

A converted folder is data from anyone. timm passes its ``model_args`` on as keyword arguments, and
``timm.create_model`` itself takes some (``checkpoint_path`` loads any file the config names, ``pretrained_cfg``
redirects the weights). So only the arguments that describe the network are accepted, each with its type and
range checked, and anything else is refused in one sentence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from maedet.errors import MaeDetError

__all__ = ["FOLDER_MODEL_ARGS", "check_model_args"]

_POOLS = ("", "avg", "max", "avgmax", "catavgmax", "fast", "fastavg")


def _count(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"a whole number from {low} to {high}"

    return check


def _rate(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1
    return None if ok else "a number from 0 up to (not including) 1"


def _pool(value: Any) -> str | None:
    return None if isinstance(value, str) and value in _POOLS else f"one of {', '.join(map(repr, _POOLS))}"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else "the structure written out as a JSON object"


# The arguments a folder may set, and what each must be (the structure itself is checked when it is parsed).
FOLDER_MODEL_ARGS: dict[str, Callable[[Any], str | None]] = {
    "num_classes": _count(0, 100_000),
    "in_chans": _count(1, 64),
    "global_pool": _pool,
    "drop_rate": _rate,
    "drop_path_rate": _rate,
    "structure": _mapping,
}


def check_model_args(model_args: Any, where: str) -> dict[str, Any]:
    """``model_args`` as a dict when every key is known and every value of the right type, else one sentence."""
    if model_args is None:
        return {}
    if not isinstance(model_args, Mapping):
        raise MaeDetError(f"model_args in {where} must be a JSON object, not {type(model_args).__name__}.")
    unknown = sorted(str(key) for key in model_args if key not in FOLDER_MODEL_ARGS)
    if unknown:
        raise MaeDetError(
            f"model_args in {where} sets {', '.join(repr(k[:60]) for k in unknown[:4])}, which a folder may not set "
            f"(accepted: {', '.join(FOLDER_MODEL_ARGS)})."
        )
    for key, value in model_args.items():
        need = FOLDER_MODEL_ARGS[key](value)
        if need is not None:
            raise MaeDetError(f"model_args.{key} in {where} must be {need}, not {str(value)[:40]!r}.")
    return dict(model_args)
