"""Zero-shot maximum-entropy search (MAE-DET): scores, search space, budgets and the evolutionary search."""

from .budget import PRESETS, Budget, preset_budget
from .errors import SearchError
from .evaluator import GenomeEvaluator
from .evolution import ForwardOptions, Search, SearchSettings
from .executors import LocalProcessExecutor, RayExecutor, SerialExecutor, make_executor
from .latency import GenomeLatency, LatencyTarget, latency_figures, open_latency_target, parse_latency_budget
from .pareto import ParetoSettings, run_pareto, write_pareto
from .report import describe, write_outputs
from .score import DEFAULT_RATIOS, ScoreResult, closed_form_score, forward_score, score_levels
from .space import SearchSpace

__all__ = [
    "DEFAULT_RATIOS",
    "PRESETS",
    "Budget",
    "ForwardOptions",
    "GenomeEvaluator",
    "GenomeLatency",
    "LatencyTarget",
    "LocalProcessExecutor",
    "ParetoSettings",
    "RayExecutor",
    "ScoreResult",
    "Search",
    "SearchError",
    "SearchSettings",
    "SearchSpace",
    "SerialExecutor",
    "closed_form_score",
    "describe",
    "forward_score",
    "latency_figures",
    "make_executor",
    "open_latency_target",
    "parse_latency_budget",
    "preset_budget",
    "run_pareto",
    "score_levels",
    "write_outputs",
    "write_pareto",
]
