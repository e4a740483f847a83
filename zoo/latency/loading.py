"""A latency predictor by name or path: the built-in tables' names, else a profiled table file.

Each module in :data:`BUILTIN_MODULES` serves the names in its ``TABLES`` through its ``load(name, batch,
input_size)``; they are imported only when a name is looked up (the V100 tables need scipy). Adding a predictor is a
new module in this package that implements :class:`~.predictor.LatencyPredictor`, plus its line here.
"""

from __future__ import annotations

import importlib
import os

from maedet.errors import MaeDetError

from ..structure import Structure
from .predictor import LatencyPredictor
from .profiled import LatencyTable

__all__ = ["BUILTIN_MODULES", "builtin_tables", "load_latency_table", "predict_latency"]

BUILTIN_MODULES = ("maedet.zoo.latency.v100",)


def builtin_tables() -> dict[str, str]:
    """Every built-in table name and the module that serves it."""
    return {name: module for module in BUILTIN_MODULES for name in importlib.import_module(module).TABLES}


def load_latency_table(
    name_or_path: str | os.PathLike[str], *, batch: int | None = None, input_size: int | None = None
) -> LatencyPredictor:
    """A built-in table by name (which needs batch and size), or a profiled table from a JSON path."""
    text = str(name_or_path)
    module = builtin_tables().get(text)
    if module is not None:
        if batch is None or input_size is None:
            raise MaeDetError(f"the built-in table {text!r} needs a batch size and an input size.")
        predictor: LatencyPredictor = importlib.import_module(module).load(text, batch, input_size)
        return predictor
    table = LatencyTable.load(name_or_path)
    for what, given, stored in (("batch", batch, table.batch), ("input size", input_size, table.input_size)):
        if given is not None and given != stored:
            raise MaeDetError(
                f"latency table {text!r} was profiled at {what} {stored}, not {given}; profile that target instead."
            )
    return table


def predict_latency(structure: Structure, table: LatencyPredictor) -> float:
    """Predicted latency of ``structure`` on ``table``'s target, in ms per batch."""
    return float(table.predict_ms(structure))
