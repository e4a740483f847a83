"""Console-script entry points that answer Ctrl-C during start-up with one line and exit code 130.

Each tool imports torch, timm and onnx before it can parse its arguments, which takes seconds; a Ctrl-C in that
time used to end in a KeyboardInterrupt traceback from deep inside an import (issue 12.5). These entry points
import the tool inside a handler. This module lives outside the ``maedet`` package on purpose: importing anything
under ``maedet`` runs its ``__init__``, which registers the models with timm and so imports torch.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["bench", "convert", "data", "detect", "evaluate", "export", "search", "train"]

_TOOLS = {
    "maedet-search": ("maedet.search.cli", "main"),
    "maedet-export": ("maedet.export.cli", "main"),
    "maedet-bench": ("maedet.bench.cli", "main"),
    "maedet-convert": ("maedet.zoo.convert", "main"),
    "maedet-detect": ("maedet.detect.cli", "detect_main"),
    "maedet-eval": ("maedet.detect.cli", "eval_main"),
    "maedet-train": ("maedet.train.cli", "main"),
    "maedet-data": ("maedet.train.data_cli", "main"),
}


def _launch(prog: str) -> int:
    module_name, function = _TOOLS[prog]
    try:
        main = getattr(importlib.import_module(module_name), function)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted while starting; nothing was written.\n")
        return 130
    return int(main() or 0)


def search() -> int:
    return _launch("maedet-search")


def export() -> int:
    return _launch("maedet-export")


def bench() -> int:
    return _launch("maedet-bench")


def convert() -> int:
    return _launch("maedet-convert")


def detect() -> int:
    return _launch("maedet-detect")


def evaluate() -> int:
    return _launch("maedet-eval")


def data() -> int:
    return _launch("maedet-data")


def train() -> int:
    return _launch("maedet-train")
