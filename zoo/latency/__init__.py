"""Predicted latency of backbones on a target: one interface, two predictors, one table format (docs/latency.md).

* :mod:`.predictor` — :class:`LatencyPredictor`, the protocol the search, reports and bench use;
* :mod:`.pieces` — a backbone as pieces and operators, the vocabulary predictors price;
* :mod:`.profiled` — :class:`LatencyTable`, a table ``maedet-bench profile`` measured on this machine;
* :mod:`.table_format` — that table's JSON file, written atomically and read back checked;
* :mod:`.v100` — the authors' V100 tables, reproduced exactly (scipy; imported on first use);
* :mod:`.goal` — the accuracy goal a profiled table is validated against;
* :mod:`.loading` — a predictor by built-in name or by path.

The fit that turns timed samples into a table's model lives beside the profiler that runs it (bench/profile_fit.py).
"""

from .loading import BUILTIN_MODULES, builtin_tables, load_latency_table, predict_latency
from .pieces import FEATURE_NAMES, Op, Piece, conv_count, op_features, piece_ops, regime_key, structure_pieces
from .predictor import LatencyPredictor
from .profiled import LatencyTable
from .table_format import TABLE_FORMAT

__all__ = [
    "BUILTIN_MODULES",
    "FEATURE_NAMES",
    "TABLE_FORMAT",
    "LatencyPredictor",
    "LatencyTable",
    "Op",
    "Piece",
    "builtin_tables",
    "conv_count",
    "load_latency_table",
    "op_features",
    "piece_ops",
    "predict_latency",
    "regime_key",
    "structure_pieces",
]
