"""Zero-shot maximum-entropy search (MAE-DET): scores, search space, budgets and the evolutionary search."""

from .budget import PRESETS, Budget, preset_budget
from .errors import SearchError
from .evaluator import GenomeEvaluator
from .evolution import ForwardOptions, Search, SearchSettings
from .executors import LocalProcessExecutor, RayExecutor, SerialExecutor, make_executor
from .report import describe, write_outputs
from .score import DEFAULT_RATIOS, ScoreResult, closed_form_score, forward_score, score_levels
from .space import SearchSpace

__all__ = [
    "DEFAULT_RATIOS",
    "PRESETS",
    "Budget",
    "ForwardOptions",
    "GenomeEvaluator",
    "LocalProcessExecutor",
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
    "make_executor",
    "preset_budget",
    "score_levels",
    "write_outputs",
]
