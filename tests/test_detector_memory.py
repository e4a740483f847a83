"""Predicted peak memory of whole detectors (ONNX Runtime CPU): the FPN's and head's weights and their order in the
exported detector, the detector's activations, the table's detector memory part, the search's --budget-memory with
--detector-budget, and the prediction against real detector sessions measured in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maedet.errors import MaeDetError
from maedet.search.cli import main
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.detector import DetectorHead, detector_widths
from maedet.zoo.latency.detector_memory import (
    NMS_PRE,
    DetectorMemoryModel,
    detector_initializer_bytes,
    detector_memory_features,
    detector_tensors,
    neck_head_initializer_bytes,
    table_detector_memory_model,
)
from maedet.zoo.latency.memory import (
    PHASE_FEATURES,
    MemoryModel,
    Phase,
    _in_flight,
    activation_peak_bytes,
    initializer_bytes,
    memory_features,
    network_tensors,
)

MIXED = Path(__file__).parent / "data" / "mixed_structure.json"  # C3 is the stride-1 stage after the first stride-8
SMALL_HEAD = DetectorHead(fpn_channels=32, stacked_convs=1, cls_channels=5, reg_max=2, reg_topk=2, reg_channels=8,
                          levels=4)  # fmt: skip


def mixed() -> Structure:
    return Structure.from_dict(json.loads(MIXED.read_text()))


def test_the_neck_and_head_weights_by_hand():
    """FPN 32 over C3..C5 widths 16, 24, 40, 4 levels, one conv per tower, 5 class channels, 3 bins per side
    (elements): laterals 32·17, 32·25, 32·41; three output convs and one extra level 32·(32·9+1) each; each tower's
    conv 32·32·9 with GroupNorm's 3·32 constants; class conv 5·289, box conv 12·289; quality 8·(4·3+1) and 8+1;
    4 scales and the 3-bin projection."""
    expected = [544, 800, 1312, 9248, 9248, 9248, 9248, 9312, 9312, 1445, 3468, 104, 9, 4, 3]
    assert neck_head_initializer_bytes((16, 24, 40), SMALL_HEAD) == [4 * n for n in expected]
    # the detector lists them between the backbone's blocks in order and its other blocks' last 1×1s
    s = builtin_structure("maedet_s")
    whole = detector_initializer_bytes(s, SMALL_HEAD, (16, 24, 40))
    assert sorted(whole) == sorted(initializer_bytes(s) + [4 * n for n in expected])
    assert whole[-1] == initializer_bytes(s)[-1] and whole[0] == initializer_bytes(s)[0]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fpn"), [("mixed", 32), ("maedet_s", 128)])
def test_the_detectors_weights_and_their_order_are_the_exported_detectors(tmp_path, name, fpn):
    """Every float initializer of the exported detector (as the bench exports it, NMS in the graph) is counted, and
    the weights in flight along the predicted order match the exported order's (biases the exporter lists
    elsewhere move it by a few KiB)."""
    import numpy as np
    import onnx

    from maedet.bench.profile_detector import DetectorUnit, bench_module
    from maedet.export import ExportOptions, export_onnx

    structure = mixed() if name == "mixed" else builtin_structure(name)
    options = ExportOptions(input_size=(64, 64), batch=1, outputs="features", check=False, opset=17, nms=True)
    export_onnx(bench_module(DetectorUnit(structure, fpn, 64)), tmp_path / "d.onnx", options)
    inits = onnx.load(str(tmp_path / "d.onnx")).graph.initializer
    exported = [4 * int(np.prod(i.dims)) for i in inits if i.data_type == onnx.TensorProto.FLOAT]
    predicted = detector_initializer_bytes(structure, DetectorHead(fpn_channels=fpn), detector_widths(structure))
    assert sum(predicted) == sum(exported)
    assert _in_flight(predicted) == pytest.approx(_in_flight(exported), abs=64 * 1024)


def test_the_detectors_activations_in_execution_order():
    """The backbone's stage outputs are no graph outputs (the laterals read its C3..C5 blocks); the top-down sums,
    output convs and extra level chain; every level's scores and distances stay alive until the postprocess; the
    candidates NMS reads hold every level's NMS_PRE rows."""
    tensors = detector_tensors(mixed(), SMALL_HEAD, 64)
    by_name = {t.name: t for t in tensors}
    assert not any(t.output for t in tensors) and not any(t.name.startswith("C") for t in tensors)
    assert [by_name[f"lat{i}"].reads for i in range(3)] == [("s2.b1.out",), ("s3.b3.out",), ("s4.b1.out",)]
    assert by_name["sum1"].reads == ("lat1", "up1") and by_name["up0"].reads == ("sum1",)
    assert by_name["P3"].reads == ("sum0",) and by_name["P5"].reads == ("lat2",) and by_name["P6"].reads == ("P5",)
    assert by_name["lat0"].nbytes == 32 * 8 * 8 * 4 and by_name["P6"].nbytes == 32 * 1 * 1 * 4
    assert by_name["scores0"].nbytes == 4 * 8 * 8 * 4  # the 4 classes (cls_channels less the background)
    assert by_name["post.padded0"].reads == ("scores0",) and by_name["post.boxes3"].reads == (
        "distances3",
        "post.best3",
    )
    assert by_name["post.candidates"].nbytes == 4 * NMS_PRE * (4 + 4) * 4
    backbone = [t for t in network_tensors(mixed(), 64) if not t.output]
    assert tensors[: len(backbone)] == backbone
    assert activation_peak_bytes(detector_tensors(mixed(), SMALL_HEAD, 64, batch=3)) == 3 * activation_peak_bytes(
        tensors
    )


@pytest.mark.parametrize("size", [64, 320, 640])
def test_the_cached_two_part_walk_is_the_whole_detectors_walk(size):
    """The features walk the backbone and the neck + head apart (the second part cached by the pyramid's bytes);
    the activation peak and the largest activation are those of one walk over every tensor."""
    from maedet.bench.profile import sample_structures

    nets = [mixed(), builtin_structure("maedet_l"), *sample_structures(6, 11, size)]
    for s, head in zip(
        nets, [SMALL_HEAD, DetectorHead(), *[DetectorHead(fpn_channels=w) for w in (256, 128) * 3]], strict=True
    ):
        whole = detector_tensors(s, head, size, 2, 8)
        features = detector_memory_features(s, head, size, 2, 8)
        assert features["activations_mib"] * 2**20 == activation_peak_bytes(whole)
        assert features["largest_activation_mib"] * 2**20 == max(t.nbytes for t in whole)


def test_detector_features_extend_the_backbones():
    s = builtin_structure("maedet_m")
    backbone, detector = memory_features(s, 640, 1, 1), detector_memory_features(s, DetectorHead(), 640, 1, 1)
    head = sum(neck_head_initializer_bytes(detector_widths(s), DetectorHead())) / 2**20
    assert detector["weights_mib"] == pytest.approx(backbone["weights_mib"] + head, rel=1e-12)
    assert detector["weights_in_flight_mib"] > backbone["weights_in_flight_mib"] + head
    assert detector["activations_mib"] >= backbone["activations_mib"] - 1e-9  # no outputs held, more layers run


CREATION, RUN = (0.35, 0.05, 0.87, 40.0), (1.0, 0.0, 2.0, 0.5, 48.0)


def phases(creation=CREATION, run=RUN) -> dict[str, Phase]:
    return {"creation": Phase(PHASE_FEATURES["creation"], creation), "run": Phase(PHASE_FEATURES["run"], run)}


def table_file(tmp_path: Path, detector: dict | None, size: int = 320) -> Path:
    roles = {r: [1e-8, 1e-8, 1e-8, 1e-8, 0.01] for r in ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool")}
    memory = MemoryModel(phases((0.3, 0.0, 0.8, 30.0)), 1, size, 1).to_dict()
    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": size, "threads": 1},
        model={"channel_block": 1, "roles": roles},
        memory=memory | ({"detector": detector} if detector else {}),
    )
    return table.save(tmp_path / ("det.json" if detector else "nodet.json"))


def test_the_detector_memory_part_survives_a_rewrite_and_is_checked_when_it_loads(tmp_path, capsys):
    model = DetectorMemoryModel(phases(), 1, 320, 1, malloc_mmap_threshold=131072, head=DetectorHead(fpn_channels=128))
    path = table_file(tmp_path, model.to_dict())
    again = table_detector_memory_model(LatencyTable.load(path), "t")
    assert again == model and again.what == "detector memory"
    s = builtin_structure("maedet_m")
    expected = max(p.mib(detector_memory_features(s, again.head, 320, 1, 1)) for p in model.phases.values())
    assert again.predict_mib(s) == pytest.approx(expected, rel=1e-12)
    from maedet.bench.cli import main as bench_main

    assert bench_main(["profile", "--info", str(path)]) == 0
    info = capsys.readouterr().out
    assert "detector memory model (backbone + FPN 128 + GFocalV2 head + NMS" in info
    assert info.count("measured with MALLOC_MMAP_THRESHOLD_=131072") == 1  # the backbones' model measured by default
    data = json.loads(path.read_text())
    for bad, message in [
        ({**model.to_dict(), "head": {"fpn_channels": 0}}, "positive integers"),
        ({**model.to_dict(), "head": {"levels": 10**7}}, r"larger than any GFocalV2: levels 10000000 \(at most 8\)"),
        ({**model.to_dict(), "phases": {"creation": {"features": ["weights_mib"], "coefficients": [-1]}}}, "non-neg"),
        ("nope", "'detector' part must be an object"),
    ]:
        data["memory"]["detector"] = bad
        with pytest.raises(MaeDetError, match=message):
            LatencyTable.from_dict(data)
    with pytest.raises(MaeDetError, match=r"has no detector memory model; fit one with 'maedet-bench profile"):
        table_detector_memory_model(LatencyTable.load(table_file(tmp_path, None)), "t")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (("model", "roles", "pw"), "the model of 'pw' must be 5 non-negative numbers of magnitude at most 1e+12"),
        (("calibration", "offset_ms"), "malformed 'calibration' object (names → finite numbers of magnitude"),
        (("memory", "phases", "run", "coefficients"), "'coefficients' must hold one non-negative number of magnitude"),
        (("memory", "detector", "phases", "creation", "coefficients"), "(detector)"),
    ],
)
def test_a_coefficient_that_overflows_a_prediction_is_one_sentence(where, message, tmp_path, capsys):
    """1e308 is finite, yet times a network's features it is not: such a table reached score --json as a traceback
    ('Out of range float values are not JSON compliant'). Every fitted number is bounded when the table loads."""
    path = table_file(tmp_path, DetectorMemoryModel(phases(), 1, 320, 1).to_dict())
    data = json.loads(path.read_text())
    data.setdefault("calibration", {"scale": 1.0, "offset_ms": 0.0})
    *parents, key = where
    holder = data
    for name in parents:
        holder = holder[name]
    holder[key] = [1e308] * len(holder[key]) if isinstance(holder[key], list) else 1e308
    path.write_text(json.dumps(data))
    assert main(["score", "maedet_m", "--latency-table", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err


def test_score_json_gives_the_backbones_and_the_whole_detectors_memory(tmp_path, capsys):
    model = DetectorMemoryModel(phases(), 1, 320, 1)
    path = table_file(tmp_path, model.to_dict())
    assert main(["score", "maedet_m", "--latency-table", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    m = builtin_structure("maedet_m")
    assert info["detector_memory_mib"] == pytest.approx(model.predict_mib(m), abs=1e-3)
    assert info["memory_mib"] < info["detector_memory_mib"]
    assert info["detector_memory_target"]["detector"]["fpn_channels"] == 256
    assert main(["score", "maedet_m", "--latency-table", str(path)]) == 0
    assert "peak memory, whole detector (+ FPN, head, NMS)" in capsys.readouterr().out


def test_a_detector_memory_budget_search_keeps_the_whole_detector_under_it(tmp_path):
    model = DetectorMemoryModel(phases(), 1, 320, 1)
    path = table_file(tmp_path, model.to_dict())
    limit = 1.02 * model.predict_mib(builtin_structure("maedet_s"))
    args = ["run", "--latency-table", str(path), "--budget-memory", f"{limit:.3f}", "--detector-budget", "--init",
            "maedet_s", "--iterations", "200", "--population", "16", "--quiet"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "d")]) == 0
    best = json.loads((tmp_path / "d" / "best.json").read_text())
    assert best["detector_memory_mib"] <= limit and "memory_mib" not in best
    structure = Structure.from_dict(best["structure"])
    assert best["detector_memory_mib"] == pytest.approx(model.predict_mib(structure), abs=1e-3)
    # the same budget on the backbone alone admits more: the backbone's prediction is far under it
    backbone = table_file(tmp_path, None)
    assert MemoryModel.from_section(LatencyTable.load(backbone).memory, 1, 320, "t").predict_mib(structure) < limit


def test_detector_memory_budget_errors_are_one_sentence(tmp_path, capsys):
    path = table_file(tmp_path, None)
    cases = [
        (["--budget-memory", "500", "--detector-budget"], "has no detector memory model"),
        (["--budget-layers", "91", "--detector-budget"], "--budget-latency-per-image or --budget-memory"),
    ]
    for extra, message in cases:
        assert main(["run", "--latency-table", str(path), *extra, "--out", str(tmp_path / "x")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # the unvalidated table's warning comes first
        assert lines[-1].startswith("maedet-search: error:") and message in lines[-1]
        assert not any("Traceback" in line for line in lines)
        assert not (tmp_path / "x" / "best.json").exists()


def test_profile_memory_detector_needs_the_backbones_model_first(tmp_path, capsys):
    from maedet.bench.cli import main as bench_main

    roles = {r: [1e-8, 1e-8, 1e-8, 1e-8, 0.01] for r in ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool")}
    target = {"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 320, "threads": 1}
    path = LatencyTable(target=target, model={"channel_block": 1, "roles": roles}).save(tmp_path / "bare.json")
    before = path.read_bytes()
    assert bench_main(["profile", "--memory", str(path), "--detector", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maedet-bench: error:") and "has no memory model" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before and not list(tmp_path.glob("*partial"))


def test_the_detector_units_are_distinct_and_the_held_out_ones_use_the_searchs_head():
    from maedet.bench.profile_detector_memory import SEARCH_HEAD, detector_memory_units

    fitted, held_out = detector_memory_units(320, 8, 6, 0)
    assert list(fitted)[:3] == ["maedet_s_gfl", "maedet_m_gfl", "maedet_l_gfl"] and len(fitted) == 8
    assert {u.fpn_channels for n, u in fitted.items() if n.startswith("dfit")} == {256, 192, 128}
    assert all(u.fpn_channels == SEARCH_HEAD.fpn_channels and u.size == 320 for u in held_out.values())
    seen = [u.structure.to_json() for u in [*fitted.values(), *held_out.values()]]
    assert len(set(seen)) == len(seen)


def test_a_validation_of_fewer_than_three_networks_writes_valid_json():
    """Spearman's ρ is undefined for one or two networks: the section says null rather than writing NaN (which
    JSON has no word for; the table's write failed on it)."""
    from maedet.bench.profile_memory import validated_section

    model = MemoryModel(phases(), 1, 320, 1)
    rows = [{"predicted_mib": 100.0, "measured_mib": 104.0}]
    section = validated_section(model, [], rows, 1.0, "networks")
    assert section["validation"]["spearman_rho"] is None and section["validation"]["count"] == 1
    json.dumps(section, allow_nan=False)


@pytest.mark.slow
def test_detector_prediction_against_real_onnx_runtime_sessions(tmp_path):
    """Seven whole detectors at 128 px (MAE-DET-S/M/L's and random backbones with FPN widths 256/192/128), each
    measured once in a fresh subprocess as the bench exports it: the model fitted on six predicts the seventh
    within 15 % (one unrepeated measurement moves by a few percent), and every row's peak is the larger of its
    phases."""
    from maedet.bench.profile_detector_memory import fit_table_detector_memory

    path = table_file(tmp_path, None, size=128)
    table = fit_table_detector_memory(path, 6, 1, progress=False, mmap_threshold=131072, repeats=1)
    section = table.memory["detector"]
    rows = section["networks"]
    assert [r["role"] for r in rows] == ["fit"] * 6 + ["validation"]
    for r in rows:
        assert r["measured_mib"] == pytest.approx(max(r["measured_creation_mib"], r["measured_run_mib"]), abs=0.01)
    assert rows[-1]["predicted_mib"] == pytest.approx(rows[-1]["measured_mib"], rel=0.15)
    assert section["malloc_mmap_threshold"] == 131072 and section["validation"]["count"] == 1
    again = LatencyTable.load(path)
    assert table_detector_memory_model(again, "t").predict_mib(builtin_structure("maedet_m")) > 0
    assert again.memory["phases"] == LatencyTable.load(path).memory["phases"]  # the backbones' model is kept
    assert not list(tmp_path.glob("*partial"))
