"""Predicted peak memory (ONNX Runtime CPU): the activation peak, the weights, the table's memory section, the
search's --budget-memory, and the prediction against real sessions measured in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maedet.search import Budget, Search, SearchError, SearchSettings, SearchSpace
from maedet.search.cli import main
from maedet.search.memory_budget import GenomeMemory
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.memory import (
    MemoryModel,
    activation_peak_bytes,
    fit_memory_model,
    network_tensors,
    weight_bytes,
)

TINY = {
    "format": "maedet-structure/1",
    "blocks": [
        {"class": "ConvKXBNRELU", "in": 3, "out": 16, "s": 2, "k": 3},
        {"class": "SuperResK1KXK1", "in": 16, "out": 32, "s": 2, "k": 3, "L": 2, "btn": 16},
    ],
}


def tiny() -> Structure:
    return Structure.from_dict(TINY)


def test_activation_peak_of_a_tiny_network_by_hand():
    """3→16 stem (stride 2) and one stage 16→32 (bottleneck 16, stride 2, two blocks) at 32 px, batch 1, fp32.

    In execution order (bytes): stem 16·16²·4 = 16384; block 0: pool 16·8²·4 = 4096, projection 32·8²·4 = 8192,
    conv1 16·16²·4 = 16384 (while stem, projection and conv1 are alive: 16384 + 8192 + 16384 = 40960 — the peak),
    conv2 4096, out 8192; block 1: 4096, 4096, 8192; the C2 output 8192.
    """
    tensors = network_tensors(tiny(), 32, batch=1, channel_block=1)
    assert [t.nbytes for t in tensors] == [16384, 4096, 8192, 16384, 4096, 8192, 4096, 4096, 8192, 8192]
    assert activation_peak_bytes(tensors) == 40960
    assert activation_peak_bytes(network_tensors(tiny(), 32, batch=3, channel_block=1)) == 3 * 40960
    # a blocked layout pads 16 channels to 32 (the graph output C2 keeps its plain layout)
    assert activation_peak_bytes(network_tensors(tiny(), 32, batch=1, channel_block=32)) == 32768 + 8192 + 32768


@pytest.mark.parametrize("name", ["maedet_s", "r50_like_init"])
def test_weight_bytes_are_the_deployed_models_parameters(name):
    from maedet.export.model_source import resolve_model
    from maedet.zoo import fuse_bn

    structure = builtin_structure(name)
    module = fuse_bn(resolve_model("maedet", structure=structure).module.eval())
    assert weight_bytes(structure) == 4 * sum(p.numel() for p in module.parameters())


def model(coefs=(2.0, 3.0, 30.0)) -> MemoryModel:
    return MemoryModel(coefs, batch=1, input_size=640, channel_block=16)


def test_a_bigger_network_predicts_more_memory():
    m = model()
    small, medium, large = (m.predict_mib(builtin_structure(n)) for n in ("maedet_s", "maedet_m", "maedet_l"))
    assert 30 < small < medium < large


def test_the_fit_recovers_known_coefficients():
    nets = [builtin_structure(n) for n in ("maedet_s", "maedet_m", "maedet_l", "r50_like_init")]
    truth = model((2.1, 2.9, 27.0))
    fitted = fit_memory_model(nets, [truth.predict_mib(s) for s in nets], 1, 640, 16)
    assert fitted.coefficients == pytest.approx((2.1, 2.9, 27.0), rel=1e-6)


def table_with_memory(tmp_path, memory: dict | None) -> str:
    roles = {r: [1e-8, 1e-8, 1e-8, 1e-8, 0.01] for r in ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool")}
    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 640, "threads": 1},
        model={"channel_block": 16, "roles": roles},
        memory=memory or {},
    )
    return str(table.save(tmp_path / ("with-memory.json" if memory else "without-memory.json")))


def test_the_memory_section_survives_a_rewrite_and_old_tables_still_load(tmp_path):
    path = table_with_memory(tmp_path, model().to_dict())
    again = LatencyTable.load(path)
    assert again.memory["coefficients"] == [2.0, 3.0, 30.0]
    assert LatencyTable.load(table_with_memory(tmp_path, None)).memory == {}


def test_score_json_shows_the_predicted_memory(tmp_path, capsys):
    path = table_with_memory(tmp_path, model().to_dict())
    assert main(["score", "maedet_m", "--latency-table", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["memory_mib"] == pytest.approx(model().predict_mib(builtin_structure("maedet_m")), abs=1e-3)


def test_a_memory_budget_without_a_memory_model_is_one_sentence(tmp_path, capsys):
    path = table_with_memory(tmp_path, None)
    args = ["run", "--budget-memory", "500", "--latency-table", path, "--iterations", "5", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # the unvalidated table's warning comes first
    assert lines[-1].startswith("maedet-search: error:") and "has no memory model" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "o" / "best.json").exists()


def test_the_search_rejects_candidates_over_the_memory_budget():
    m = model()
    init = builtin_structure("maedet_s")
    limit = m.predict_mib(init) * 1.05
    with pytest.raises(SearchError, match=r"predicted memory .* MiB >"):
        Search(SearchSettings(init=builtin_structure("maedet_m"), budget=Budget(memory_mib=limit), memory=m))
    settings = SearchSettings(init=init, budget=Budget(memory_mib=limit), memory=m, iterations=200, population=16)
    search = Search(settings)
    search.run()
    assert search.candidates == 200
    members = [search.structure(g) for _, g in search.population]
    assert all(m.predict_mib(s) <= limit for s in members)
    space = SearchSpace.from_structure(init, 480)
    over = space.encode(builtin_structure("maedet_m"))  # same stage count, predicted far over the limit
    assert not settings.budget.admits(search.evaluator, over, None, GenomeMemory(space, m))


def test_a_memory_budget_needs_a_model():
    with pytest.raises(SearchError, match="memory model"):
        Search(SearchSettings(init=builtin_structure("maedet_s"), budget=Budget(memory_mib=1000.0)))


@pytest.mark.slow
def test_prediction_against_real_onnx_runtime_sessions():
    """Five small networks at 192 px, each measured in a fresh subprocess (peak RSS rise of a session and two runs):
    a model fitted on four predicts the fifth within 20 % (one unrepeated measurement moves by up to 10 %), and
    the largest network measures and predicts more than the smallest."""
    from maedet.bench.memory_measure import measure_networks
    from maedet.bench.profile import sample_structures

    pool = sorted(sample_structures(10, 3, 192), key=weight_bytes)
    nets = {f"n{i}": s for i, s in enumerate(pool[::2])}
    measured = measure_networks(nets, 192, 1, 1, repeats=1)
    fit_names = ["n0", "n1", "n3", "n4"]
    fitted = fit_memory_model([nets[n] for n in fit_names], [measured[n] for n in fit_names], 1, 192, 16)
    assert fitted.predict_mib(nets["n2"]) == pytest.approx(measured["n2"], rel=0.20)
    assert measured["n4"] > measured["n0"]
    assert fitted.predict_mib(nets["n4"]) > fitted.predict_mib(nets["n0"])


def test_profile_memory_refuses_a_table_of_another_runtime_in_one_sentence(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    roles = {r: [1e-8, 1e-8, 1e-8, 1e-8, 0.01] for r in ("stem", "pw", "k3s1", "k3s2", "pool")}
    target = {"backend": "ort-cpu", "precision": "int8", "batch": 1, "input_size": 320, "threads": 1}
    path = LatencyTable(target=target, model={"channel_block": 16, "roles": roles}).save(tmp_path / "int8.json")
    before = path.read_bytes()
    assert bench_main(["profile", "--memory", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and "fp32" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("section", "expect"),
    [
        ({"features": ["weights_mib"], "coefficients": [1, 1, 1]}, "must list the features"),
        ({"features": ["weights_mib", "activations_mib", "overhead"], "coefficients": [1, -1, 1]}, "non-negative"),
        (
            {"features": ["weights_mib", "activations_mib", "overhead"], "coefficients": [1, 1, 1], "validation": 3},
            "'validation' must be an object",
        ),
    ],
)
def test_a_malformed_memory_section_is_one_sentence_when_the_table_loads(tmp_path, capsys, section, expect):
    from maedet.bench.cli import main as bench_main

    path = tmp_path / "t.json"
    data = json.loads(Path(table_with_memory(tmp_path, model().to_dict())).read_text())
    path.write_text(json.dumps(data | {"memory": section}))
    assert bench_main(["profile", "--info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and expect in err and len(err.splitlines()) == 1
