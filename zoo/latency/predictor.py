"""What every latency predictor offers: the one interface the search, the reports and the bench rely on.

Two predictors implement it: a profiled table (:class:`~.profiled.LatencyTable`, measured on this machine) and the
authors' V100 tables (:class:`~.v100.V100Predictor`). A predictor prices a backbone of the search space as a sum of
:class:`~.pieces.Piece` costs (the stem, a stage's first block, its identity block) turned into a network's time by
:meth:`LatencyPredictor.network_ms`; that is what lets the search price a genome stage by stage, cached, without
knowing which predictor it holds. ``predict_ms`` is the predictor's own figure for a whole Structure (the authors'
conv order for V100, so it stays exact). docs/latency.md says how to add a third.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ..structure import Structure
from .pieces import Piece

__all__ = ["LatencyPredictor"]


@runtime_checkable
class LatencyPredictor(Protocol):
    """Predicted latency of backbones on one target (a device, runtime, precision, batch and input size).

    All times are ms; "per batch" is the target's batch, "per image" that divided by the batch.
    """

    @property
    def label(self) -> str:
        """How reports label its figures, e.g. ``predicted (authors' V100 table)``."""
        ...

    @property
    def batch(self) -> int: ...

    @property
    def input_size(self) -> int: ...

    @property
    def target(self) -> Mapping[str, Any]:
        """What it predicts for (JSON data: batch, input_size, device, precision, ...), shown in reports."""
        ...

    @property
    def identity(self) -> dict[str, Any]:
        """JSON data that names exactly these predictions (a resumed search must predict with the same)."""
        ...

    @property
    def references(self) -> Mapping[str, float]:
        """Measured ms per batch of named networks (``resnet50``, …) for relative budgets; may be empty."""
        ...

    def predict_ms(self, structure: Structure) -> float:
        """ms per batch of a whole backbone (inf where the predictor has no figure)."""
        ...

    def predict_ms_per_image(self, structure: Structure) -> float: ...

    def out_size(self, size: int, stride: int) -> int:
        """The feature size after a stride, rounded as this predictor rounds it (piece sizes follow it)."""
        ...

    def piece_ms(self, piece: Piece) -> float:
        """ms per batch of one piece, before :meth:`network_ms` (cached by the predictor)."""
        ...

    def network_ms(self, pieces_ms: float, convs: int) -> float:
        """ms per batch of a network from the sum of its pieces' ms and the number of convolutions it runs."""
        ...

    def accuracy_warning(self, where: str) -> str | None:
        """A sentence when its predictions are known to miss their accuracy goal (or their accuracy is unknown)."""
        ...
