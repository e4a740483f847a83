"""Console-script entry points that answer Ctrl-C during start-up with one line and exit code 130.

Each tool imports torch, timm and onnx before it can parse its arguments, which takes seconds; a Ctrl-C in that
time used to end in a KeyboardInterrupt traceback from deep inside an import (issue 12.5). These entry points
import the tool inside a handler. Importing this module (and the ``maedet`` package around it) loads no torch, so
the handler is in place before the slow imports start (tests/test_layers.py checks that).
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

__all__ = ["bench", "convert", "data", "detect", "evaluate", "export", "search", "train"]

_TOOLS = {
    "maedet-search": ("maedet.search.cli", "main"),
    "maedet-export": ("maedet.detect.accuracy_measure", "export_main"),  # export's CLI with COCO AP for --max-ap-drop
    "maedet-bench": ("maedet.bench.cli", "main"),
    "maedet-convert": ("maedet.zoo.convert", "main"),
    "maedet-detect": ("maedet.detect.cli", "detect_main"),
    "maedet-eval": ("maedet.detect.cli", "eval_main"),
    "maedet-train": ("maedet.train.cli", "main"),
    "maedet-data": ("maedet.train.data_cli", "main"),
}


def _launch(prog: str) -> int:
    """Import the tool's module (the slow part) under a Ctrl-C handler, then run its main."""
    module_name, function = _TOOLS[prog]
    try:
        main = getattr(importlib.import_module(module_name), function)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted while starting; nothing was written.\n")
        return 130
    return int(main() or 0)


search = partial(_launch, "maedet-search")
export = partial(_launch, "maedet-export")
bench = partial(_launch, "maedet-bench")
convert = partial(_launch, "maedet-convert")
detect = partial(_launch, "maedet-detect")
evaluate = partial(_launch, "maedet-eval")
train = partial(_launch, "maedet-train")
data = partial(_launch, "maedet-data")
