"""One reading of a ``--device`` option for every tool, checked against this machine before any work (issue 17).

``torch.device`` accepts ``cuda:99`` and ``meta`` and only fails (or, for ``meta``, computes nothing) deep inside a
run; a typo like ``banana`` is a RuntimeError listing twenty device types. Here ``cpu`` and ``cuda[:N]`` are the
devices the tools run on, and each problem is one sentence.
"""

from __future__ import annotations

import argparse
import re

from .errors import MaeDetError

__all__ = ["device_argument", "parse_device"]

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d{1,4}))?$")


def parse_device(text: str) -> str:
    """``text`` as a device string PyTorch accepts and this machine has (``cpu``, ``cuda``, ``cuda:N``)."""
    match = _DEVICE_RE.match(str(text).strip().lower())
    if match is None:
        shown = str(text)[:40]
        raise MaeDetError(f"unknown device {shown!r}; use cpu, cuda or cuda:N.")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise MaeDetError(f"there is no CPU device {index}; use cpu.")
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise MaeDetError("CUDA is not available on this machine; use --device cpu.")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise MaeDetError(f"there is no CUDA device {int(index)}; this machine has {count} (0..{count - 1}).")
    return "cuda" if index is None else f"cuda:{int(index)}"


def device_argument(text: str) -> str:
    """``parse_device`` as an argparse ``type=``: a bad device is a usage error (one line, exit 2)."""
    try:
        return parse_device(text)
    except MaeDetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
