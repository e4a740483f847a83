"""Predicted peak memory (ONNX Runtime CPU): the activation peak, the weights, the table's memory section, the
search's --budget-memory, and the prediction against real sessions measured in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maedet.errors import MaeDetError
from maedet.search import Budget, Search, SearchError, SearchSettings, SearchSpace
from maedet.search.cli import main
from maedet.search.memory_budget import GenomeMemory
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.memory import (
    PHASE_FEATURES,
    MemoryModel,
    Phase,
    activation_peak_bytes,
    fit_memory_model,
    initializer_bytes,
    memory_features,
    network_tensors,
    weight_bytes,
    weights_in_flight_bytes,
)

MIXED = Path(__file__).parent / "data" / "mixed_structure.json"  # strided, widening, deep and stride-1 stages
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


def test_weights_in_flight_of_a_tiny_network_by_hand():
    """TINY's convs (weights + biases, in elements) in the exported initializer order: stem 16·(3·9+1) = 448; the
    first block, which strides and widens: 1×1 16·17 = 272, 3×3 16·(16·9+1) = 2320, last 1×1 32·17 = 544,
    projection 32·17 = 544; the second block: 1×1 16·33 = 528, 3×3 2320; then the second block's last 1×1, 544.
    The largest (converted before + 4 × the one in hand) is the second block's 3×3: 4656 + 4·2320 = 13936, so the
    weights in flight are (7520 + 13936) · 4 bytes."""
    assert initializer_bytes(tiny()) == [4 * n for n in (448, 272, 2320, 544, 544, 528, 2320, 544)]
    assert weights_in_flight_bytes(tiny()) == (7520 + 13936) * 4
    assert memory_features(tiny(), 64, 1, 1)["weights_in_flight_mib"] == pytest.approx(85824 / 2**20)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maedet_s", "mixed"])
def test_the_initializer_order_is_the_exported_models(tmp_path, name):
    """The order ONNX Runtime converts the weights in is the exported file's: each conv (weight and bias together)
    where its weight first appears, for a published structure and one mixing strided, widening, deep stages."""
    import onnx

    from maedet.bench.memory_measure import export_network

    structure = builtin_structure(name) if name != "mixed" else Structure.from_dict(json.loads(MIXED.read_text()))
    proto = onnx.load(str(export_network(structure, 64, 1, tmp_path / "n.onnx")))
    first: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for init in proto.graph.initializer:
        conv, kind = init.name.rsplit(".", 1)
        if kind == "weight":
            first.setdefault(conv, len(first))
        n = 4
        for d in init.dims:
            n *= d
        nbytes[conv] = nbytes.get(conv, 0) + n
    assert [nbytes[c] for c in sorted(first, key=first.get)] == initializer_bytes(structure)


@pytest.mark.parametrize("name", ["maedet_s", "r50_like_init"])
def test_weight_bytes_are_the_deployed_models_parameters(name):
    from maedet.export.model_source import resolve_model
    from maedet.zoo import fuse_bn

    structure = builtin_structure(name)
    module = fuse_bn(resolve_model("maedet", structure=structure).module.eval())
    assert weight_bytes(structure) == 4 * sum(p.numel() for p in module.parameters())


CREATION, RUN = (1.4, 1.5, 0.5, 30.0), (2.2, 0.5, 1.0, 4.0, 35.0)


def model(creation=CREATION, run=RUN) -> MemoryModel:
    phases = {"creation": Phase(PHASE_FEATURES["creation"], creation), "run": Phase(PHASE_FEATURES["run"], run)}
    return MemoryModel(phases, batch=1, input_size=640, channel_block=16)


def test_a_bigger_network_predicts_more_memory():
    m = model()
    small, medium, large = (m.predict_mib(builtin_structure(n)) for n in ("maedet_s", "maedet_m", "maedet_l"))
    assert 30 < small < medium < large


def test_the_peak_is_the_larger_phase_each_a_sum_of_its_features():
    """MAE-DET-M at 640: creation 1.4·W + 1.5·(three largest weights) + 0.5·(weights in flight) + 30, run 2.2·W +
    0.5·(largest three) + 1.0·(activation peak) + 4.0·(largest activation) + 35, from the features computed here;
    and a network made activation-heavy by a larger input has its peak in the run instead."""
    m = model()
    f = memory_features(builtin_structure("maedet_m"), 640, 1, 16)
    creation = 1.4 * f["weights_mib"] + 1.5 * f["largest_weights_mib"] + 0.5 * f["weights_in_flight_mib"] + 30.0
    run = 2.2 * f["weights_mib"] + 0.5 * f["largest_weights_mib"] + f["activations_mib"]
    run += 4.0 * f["largest_activation_mib"] + 35.0
    assert m.phase_mib(builtin_structure("maedet_m")) == pytest.approx({"creation": creation, "run": run})
    assert m.predict_mib(builtin_structure("maedet_m")) == pytest.approx(max(creation, run))
    assert f["largest_weights_mib"] < f["weights_mib"] and f["largest_activation_mib"] < f["activations_mib"]
    big = MemoryModel(m.phases, batch=4, input_size=1280, channel_block=16).phase_mib(builtin_structure("maedet_m"))
    assert big["run"] > big["creation"]


def test_the_fit_recovers_known_coefficients_of_both_phases():
    from maedet.bench.profile import sample_structures

    nets = [builtin_structure(n) for n in ("maedet_s", "maedet_m", "maedet_l", "r50_like_init")]
    nets += sample_structures(6, 5, 640)
    truth = model((1.1, 1.3, 0.9, 27.0), (2.3, 0.4, 1.7, 3.9, 31.0))
    measured = {p: [truth.phase_mib(s)[p] for s in nets] for p in ("creation", "run")}
    fitted = fit_memory_model(nets, measured, 1, 640, 16)
    assert fitted.phases["creation"].coefficients == pytest.approx((1.1, 1.3, 0.9, 27.0), rel=1e-6)
    assert fitted.phases["run"].coefficients == pytest.approx((2.3, 0.4, 1.7, 3.9, 31.0), rel=1e-6)
    with pytest.raises(MaeDetError, match="at least 6 measured networks"):
        fit_memory_model(nets[:5], {p: v[:5] for p, v in measured.items()}, 1, 640, 16)


def test_a_one_phase_section_of_an_older_table_still_predicts():
    """Tables written before the two phases hold one linear model: weights, activation peak, overhead."""
    old = {"features": ["weights_mib", "activations_mib", "overhead"], "coefficients": [2.0, 3.0, 30.0]}
    m = MemoryModel.from_section(old, 1, 640, "old.json")
    f = memory_features(builtin_structure("maedet_s"), 640, 1, 1)
    assert m.predict_mib(builtin_structure("maedet_s")) == pytest.approx(
        2.0 * f["weights_mib"] + 3.0 * f["activations_mib"] + 30.0
    )


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
    assert again.memory["phases"]["run"]["coefficients"] == list(RUN)
    assert MemoryModel.from_section(again.memory, 1, 640, "t") == model()
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
    """Eight small networks at 192 px, each measured in a fresh subprocess (peak RSS rise of a session's creation
    and of its two runs): the process peak is the larger phase; a model fitted on seven predicts the eighth within
    20 % (one unrepeated measurement moves by up to 10 %), and the largest network measures and predicts more than
    the smallest."""
    from maedet.bench.memory_measure import measure_networks
    from maedet.bench.profile import sample_structures

    pool = sorted(sample_structures(16, 3, 192), key=weight_bytes)
    nets = {f"n{i}": s for i, s in enumerate(pool[::2])}
    measured = measure_networks(nets, 192, 1, 1, repeats=1)
    for m in measured.values():
        assert m["peak"] == pytest.approx(max(m["creation"], m["run"]), abs=0.01)
    fit_names = [n for n in nets if n != "n3"]
    by_phase = {p: [measured[n][p] for n in fit_names] for p in ("creation", "run")}
    fitted = fit_memory_model([nets[n] for n in fit_names], by_phase, 1, 192, 16)
    assert fitted.predict_mib(nets["n3"]) == pytest.approx(measured["n3"]["peak"], rel=0.20)
    assert measured["n7"]["peak"] > measured["n0"]["peak"]
    assert fitted.predict_mib(nets["n7"]) > fitted.predict_mib(nets["n0"])


@pytest.mark.slow
def test_a_fixed_mmap_threshold_returns_the_weight_copies_glibc_would_keep(tmp_path):
    """One weight-heavy network measured in fresh subprocesses with glibc's default allocator and with a fixed mmap
    threshold: by default the session's copies of the weights land in heap holes that stay resident into the runs;
    with the threshold fixed they are mapped and returned, so the runs' peak is far lower (0.45-0.71 of the
    default's on 56 networks at 320 px)."""
    from maedet.bench.memory_measure import export_network, measure_model_file
    from maedet.bench.profile import sample_structures

    heavy = max(sample_structures(12, 4, 192), key=weight_bytes)
    path = export_network(heavy, 192, 1, tmp_path / "heavy.onnx")
    default = measure_model_file(path, 192, 1, 1, repeats=1)
    fixed = measure_model_file(path, 192, 1, 1, repeats=1, mmap_threshold=131072)
    assert fixed["run"] < 0.85 * default["run"]
    assert fixed["creation"] < default["creation"]


def test_the_measuring_subprocess_runs_glibc_defaults_or_the_asked_threshold(monkeypatch):
    """The caller's allocator settings never reach the measurement (a table says how it was measured); a threshold
    glibc would ignore is one sentence."""
    from maedet.bench.errors import BenchError
    from maedet.bench.memory_measure import child_environment

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4096")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    monkeypatch.setenv("MAEDET_KEEP", "yes")
    env = child_environment()
    assert not any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in env) and env["MAEDET_KEEP"] == "yes"
    assert child_environment(131072)["MALLOC_MMAP_THRESHOLD_"] == "131072"
    with pytest.raises(BenchError, match=r"^a malloc mmap threshold must be 0 to 33554432 bytes, got 67108864\.$"):
        child_environment(64 * 2**20)


def test_a_section_measured_with_a_fixed_threshold_says_so(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    fixed = MemoryModel(model().phases, 1, 640, 16, malloc_mmap_threshold=131072)
    section = fixed.to_dict()
    assert section["malloc_mmap_threshold"] == 131072 and "malloc_mmap_threshold" not in model().to_dict()
    assert MemoryModel.from_section(section, 1, 640, "t") == fixed
    path = table_with_memory(tmp_path, section)
    assert bench_main(["profile", "--info", path]) == 0
    assert "measured with MALLOC_MMAP_THRESHOLD_=131072 (glibc)" in capsys.readouterr().out
    assert main(["score", "maedet_m", "--latency-table", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory_target"]["malloc_mmap_threshold"] == 131072


def test_the_mmap_threshold_goes_with_memory_and_glibcs_range_in_one_sentence(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    path = Path(table_with_memory(tmp_path, None))
    before = path.read_bytes()
    assert bench_main(["profile", "--info", str(path), "--malloc-mmap-threshold", "131072"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and "give it with --memory" in err and len(err.splitlines()) == 1
    args = ["profile", "--memory", str(path), "--malloc-mmap-threshold", str(2**30), "--no-progress"]
    assert bench_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and "0 to 33554432 bytes" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before and not list(tmp_path.glob("*.memory-partial"))


def test_peak_memory_phases_each_hold_their_own_peak():
    """In a fresh process: 200 MiB touched and freed in the first phase, 50 MiB in the second; the first phase's
    peak holds the 200, the second's only the 50, and the window's peak is the larger."""
    import subprocess
    import sys

    probe = (
        "import json, numpy as np\n"
        "from maedet.bench.memory import PeakMemory\n"
        "with PeakMemory('cpu-rss-rise') as peak:\n"
        "    a = np.ones(200 * 2**18, dtype=np.float32); del a\n"
        "    first = peak.phase()\n"
        "    b = np.ones(50 * 2**18, dtype=np.float32)\n"
        "print(json.dumps({'phases': peak.phases, 'all': peak.megabytes, 'first': first}))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["all"] is None:
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs)")
    first, second = result["phases"]
    assert first == result["first"] and 190 <= first < 230  # page accounting moves a rise by some hundred KiB
    assert 45 <= second < 80
    assert result["all"] == first


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


def test_profile_memory_asks_for_enough_fit_networks_before_measuring(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    path = Path(table_with_memory(tmp_path, None))
    before = path.read_bytes()
    assert bench_main(["profile", "--memory", str(path), "--memory-fit-nets", "5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and "at least 6 networks" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before and not list(tmp_path.glob("*.memory-partial"))


def test_info_shows_both_phases_of_the_memory_model(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    assert bench_main(["profile", "--info", table_with_memory(tmp_path, model().to_dict())]) == 0
    out = capsys.readouterr().out
    assert "creation: 1.400·weights + 1.500·largest_weights + 0.500·weights_in_flight + 30.0" in out
    assert "run: 2.200·weights + 0.500·largest_weights + 1.000·activations + 4.000·largest_activation + 35.0" in out


@pytest.mark.parametrize(
    ("section", "expect"),
    [
        ({"features": ["weights_mib"], "coefficients": [1, 1, 1]}, "must hold 'phases'"),
        ({"features": ["weights_mib", "activations_mib", "overhead"], "coefficients": [1, -1, 1]}, "non-negative"),
        (
            {"features": ["weights_mib", "activations_mib", "overhead"], "coefficients": [1, 1, 1], "validation": 3},
            "'validation' must be an object",
        ),
        ({"phases": {}}, "must map 1 to 8 phase names"),
        ({"phases": {"run": {"features": ["__import__"], "coefficients": [1]}}}, "must be a list drawn from"),
        ({"phases": {"run": {"features": ["overhead", "overhead"], "coefficients": [1, 1]}}}, "names a feature twice"),
        (
            {"phases": {"run": {"features": ["overhead"], "coefficients": [1, 2]}}},
            "one non-negative number of magnitude at most 1e+12 per",
        ),
        ({"phases": {"run": [1, 2]}}, "must be an object with 'features'"),
        ({"phases": {str(i): {"features": ["overhead"], "coefficients": [1]} for i in range(9)}}, "1 to 8 phase"),
        (
            {"phases": {"run": {"features": ["overhead"], "coefficients": [1]}}, "malloc_mmap_threshold": True},
            "'malloc_mmap_threshold' must be an integer from 0 to 33554432 bytes",
        ),
        (
            {"phases": {"run": {"features": ["overhead"], "coefficients": [1]}}, "malloc_mmap_threshold": 2**26},
            "'malloc_mmap_threshold' must be an integer",
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
