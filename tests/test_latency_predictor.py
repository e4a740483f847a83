"""The LatencyPredictor protocol: both predictors implement it, the search needs nothing else, one name per idea."""

from __future__ import annotations

import random
from typing import Any

import pytest

from maedet.search import GenomeLatency, LatencyTarget, SearchSpace
from maedet.search.latency import latency_figures
from maedet.zoo import Structure, builtin_structure, load_structure
from maedet.zoo.latency import (
    LatencyPredictor,
    LatencyTable,
    Piece,
    conv_count,
    load_latency_table,
    op_features,
    piece_ops,
    structure_pieces,
)

COEFS = [1.0e-8, 2.0e-8, 1.5e-8, 1.0e-8, 0.02]


def _profiled() -> LatencyTable:
    roles = {r: COEFS for r in ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool")}
    return LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 2, "input_size": 224, "threads": 1},
        model={"channel_block": 16, "roles": roles},
        calibration={"scale": 1.2, "per_conv_ms": 0.03, "offset_ms": 0.5},
    )


class MacsPredictor:
    """A third predictor, written against the protocol only: 1 ms per GMAC of every operator, 0.01 ms per conv."""

    def __init__(self) -> None:
        self.label = "predicted (1 ms per GMAC)"
        self.batch, self.input_size = 4, 160
        self.target = {"device": "GMAC counter", "batch": 4, "input_size": 160}
        self.references: dict[str, float] = {}

    @property
    def identity(self) -> dict[str, Any]:
        return {"table": "gmacs", "batch": self.batch, "input_size": self.input_size}

    def out_size(self, size: int, stride: int) -> int:
        return (size - 1) // stride + 1

    def piece_ms(self, piece: Piece) -> float:
        return sum(float(op_features(op, self.batch)[0]) for op in piece_ops(piece).values()) / 1e9

    def network_ms(self, pieces_ms: float, convs: int) -> float:
        return pieces_ms + 0.01 * convs

    def predict_ms(self, structure: Structure) -> float:
        pieces = sum(self.piece_ms(p) * n for p, n in structure_pieces(structure, self.input_size))
        return self.network_ms(pieces, conv_count(structure))

    def predict_ms_per_image(self, structure: Structure) -> float:
        return self.predict_ms(structure) / self.batch

    def accuracy_warning(self, where: str) -> str | None:
        return None


@pytest.fixture(scope="module")
def predictors() -> dict[str, Any]:
    return {
        "profiled": _profiled(),
        "v100": load_latency_table("v100-fp16", batch=32, input_size=480),
        "third": MacsPredictor(),
    }


@pytest.mark.parametrize("which", ["profiled", "v100", "third"])
def test_every_predictor_satisfies_the_protocol(predictors, which):
    assert isinstance(predictors[which], LatencyPredictor)


def test_a_structure_is_not_a_predictor():
    assert not isinstance(builtin_structure("maedet_s"), LatencyPredictor)


@pytest.mark.parametrize("which", ["profiled", "v100", "third"])
def test_one_name_for_ms_per_image(predictors, which):
    predictor, structure = predictors[which], load_structure("maedet_m")
    per_batch = predictor.predict_ms(structure)
    assert predictor.predict_ms_per_image(structure) == per_batch / predictor.batch
    figures = latency_figures(structure, LatencyTarget.of(predictor))
    assert figures["latency_ms_per_image"] == per_batch / predictor.batch


@pytest.mark.parametrize("which", ["profiled", "v100", "third"])
def test_the_search_takes_identity_and_prices_from_the_protocol(predictors, which):
    predictor = predictors[which]
    target = LatencyTarget.of(predictor)
    assert target.identity == predictor.identity
    init = builtin_structure("r50_like_init")
    space = SearchSpace.from_structure(init)
    genome_ms = GenomeLatency(space, target)
    rng, genome = random.Random(3), space.encode(init)
    for _ in range(150):
        genome = space.mutate(genome, rng) or genome
        assert genome_ms(genome) == pytest.approx(predictor.predict_ms(space.decode(genome)), rel=1e-12)


def test_identities_name_the_table_and_its_content(predictors):
    assert predictors["v100"].identity == {"table": "v100-fp16", "batch": 32, "input_size": 480}
    profiled = predictors["profiled"].identity
    assert profiled["table"] == "profiled" and len(profiled["sha256"]) == 64
    other = _profiled()
    other.calibration = {**other.calibration, "scale": 1.3}
    assert other.identity["sha256"] != profiled["sha256"]
