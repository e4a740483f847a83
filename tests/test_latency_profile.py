"""A tiny but real profile on ONNX Runtime CPU: operators timed inside networks, fitted, validated, resumed."""

from __future__ import annotations

import json

import pytest

from maedet.bench.profile import ProfileSettings, profile_target, sample_structures, validation_figures
from maedet.bench.profile_measure import (
    Measurer,
    attribute_node,
    run_node_times,
    steady_ms,
    structure_op_keys,
)
from maedet.errors import MaeDetError
from maedet.zoo import load_structure
from maedet.zoo.latency import load_latency_table

TINY = ProfileSettings(input_size=64, train_nets=2, calibration_nets=2, validation_nets=2, rounds=1, threads=1)


class Interrupt(Exception):
    pass


def test_validation_figures_by_hand():
    f = validation_figures([1.0, 2.2, 2.7, 4.0], [1.0, 2.0, 3.0, 4.5])
    assert f["within_10pct"] == 0.75  # +10% and -10% are inside; -11.1% is out
    assert f["spearman_rho"] == pytest.approx(1.0)
    assert f["rmspe_pct"] == pytest.approx(100 * ((0 + 0.01 + 0.01 + (0.5 / 4.5) ** 2) / 4) ** 0.5)


def test_steady_time_scales_each_round_by_the_anchor():
    # round 2 ran in a slow phase: everything twice as slow, the anchor too; the median is the quiet time
    assert steady_ms([10.0, 20.0, 10.5], [5.0, 10.0, 5.0], reference=5.0) == 10.0
    assert steady_ms([12.0], [6.0], reference=5.0) == 10.0


def test_sampled_structures_are_distinct_and_span_sizes():
    from maedet.zoo import macs

    nets = sample_structures(12, seed=0, resolution=224)
    assert len({n.to_json() for n in nets}) == 12
    costs = sorted(macs(n, 224, 224) for n in nets)
    assert costs[-1] > 3 * costs[0]


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ("/inner/stages_2/blocks/blocks.0/conv2/act/Relu_output_0_nchwc", "s2.b0.conv2"),
        ("/inner/stages_0/blocks/blocks.11/shortcut/conv/Conv_output_0_nchwc", "s0.b11.shortcut"),
        ("/inner/stages_1/blocks/blocks.0/downsample/AveragePool", "s1.b0.downsample"),
        ("/inner/stages_3/blocks/blocks.4/conv3/conv/Conv_token_20", "s3.b4.conv3"),  # INT8: QLinearConv
        ("/inner/stages_0/blocks/blocks.1/Add", "s0.b1.add"),  # INT8: QLinearAdd
        ("/inner/stem/act/Relu_output_0_nchwc", "stem"),
        ("ReorderOutput_token_189", None),
        ("input_QuantizeLinear", None),
    ],
)
def test_node_names_are_attributed_to_block_operators(node, key):
    assert attribute_node(node) == key


def test_node_times_are_split_per_run(tmp_path):
    def node(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": "Conv"}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},  # the warm-up: dropped
        node("/inner/stem/act/Relu", 1, 50),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("/inner/stem/act/Relu", 201, 40),
        node("/inner/stages_0/blocks/blocks.0/conv1/act/Relu", 242, 20),
        node("/inner/stages_0/blocks/blocks.0/conv1/x", 262, 10),  # two nodes of one operator add up
        node("ReorderOutput", 280, 5),
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        node("/inner/stem/act/Relu", 401, 60),
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    runs = run_node_times(path, runs=2)
    assert runs == [pytest.approx({"stem": 0.04, "s0.b0.conv1": 0.03}), pytest.approx({"stem": 0.06})]
    with pytest.raises(RuntimeError, match="holds 3 runs, expected 4"):
        run_node_times(path, runs=4)


def test_a_real_profiled_network_times_every_operator(tmp_path):
    """The exporter's node names still name the block operators: every conv and pool of a real network gets time."""
    structure = load_structure("maedet_s")
    timing = Measurer(TINY, tmp_path).network(structure, profiled=True)
    expected = {k for k, op in structure_op_keys(structure, 64).items() if op.role != "add"}  # fp32: add is fused
    assert set(timing.ops) == expected
    attributed = sum(v[0] for v in timing.ops.values())
    assert 0.5 * timing.times[0] < attributed <= timing.times[0]  # the kernels are most of the run
    assert not list(tmp_path.glob("ort-profile*"))  # the runtime's profile file is removed


def test_tiny_profile_runs_resumes_and_predicts(tmp_path):
    out = tmp_path / "t.json"
    steps: list[int] = []

    def stop_after_the_first_network(n: int) -> None:
        steps.append(n)
        raise Interrupt

    with pytest.raises(Interrupt):
        profile_target(out, TINY, progress=False, on_step=stop_after_the_first_network)
    partial = json.loads((tmp_path / "t.json.partial").read_text())
    assert list(partial["units"]) == ["train0"] and not out.exists()

    resumed: list[int] = []
    table = profile_target(out, TINY, progress=False, on_step=resumed.append)
    assert resumed[0] == 1  # the first step reports what was already there, nothing re-measured
    assert sum(resumed) == 2 + 2 + 2 + 3 + 2  # train, calibration, validation, S/M/L, ResNet-50/101
    assert not (tmp_path / "t.json.partial").exists()

    again = load_latency_table(out)
    assert again.target["backend"] == "ort-cpu" and again.target["input_size"] == 64
    assert {"pw", "stem", "pool"} <= set(again.model["roles"]) and again.model["channel_block"] in (1, 8, 16)
    assert set(again.references) >= {"resnet50", "resnet101", "maedet_s", "maedet_m", "maedet_l"}
    assert again.measurement["anchor"]["network"] == "maedet_s" and again.measurement["anchor"]["quiet_ms"] > 0
    v = again.validation
    assert v["count"] == 2 + 3 and 0 <= v["within_10pct"] <= 1 and v["rmspe_pct"] >= 0
    assert v["unscaled"]["count"] == 5
    for row in v["networks"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] == pytest.approx(
            table.predict_ms(load_structure(row["structure"]))
        )


def test_a_partial_profile_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "t.json"
    (tmp_path / "t.json.partial").write_text(
        json.dumps({"format": "maedet-latency-profile-partial/2", "settings": {"input_size": 999}})
    )
    with pytest.raises(MaeDetError, match="other settings"):
        profile_target(out, TINY, progress=False)


def test_bad_settings_get_one_sentence():
    with pytest.raises(MaeDetError, match="backend"):
        ProfileSettings(backend="tpu")
    with pytest.raises(MaeDetError, match="INT8"):
        ProfileSettings(backend="ort-cuda", precision="int8")
    with pytest.raises(MaeDetError, match="train_nets"):
        ProfileSettings(train_nets=0)


def test_profile_cli_info_and_errors(tmp_path, capsys):
    from maedet.bench.cli import main
    from maedet.zoo.latency import LatencyTable

    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 64, "threads": 1},
        model={"channel_block": 16, "roles": {"stem": [1e-8] * 5, "pw": [1e-8] * 5}},
        validation={"count": 33, "rmspe_pct": 5.0, "within_10pct": 0.9, "spearman_rho": 0.97},
        references={"resnet50": 3.5},
    )
    table.save(tmp_path / "t.json")
    assert main(["profile", "--info", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "RMSPE 5.0%" in out and "90% within ±10%" in out and "resnet50 3.50 ms" in out
    assert "channel block 16" in out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["profile", "--info", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maedet-bench: error:")
    assert main(["profile", "--backend", "ort-cpu"]) == 2


def test_a_nested_partial_profile_is_ignored_not_a_crash(tmp_path):
    """Issue 17: a '.partial' file nested 100000 deep raised RecursionError; it is now an unreadable partial."""
    from maedet.bench.profile import _State

    (tmp_path / "t.json.partial").write_text("[" * 100_000 + "]" * 100_000)
    state = _State(tmp_path / "t.json", TINY)
    assert state.units == {}


def test_profile_info_on_odd_validation_fields_is_one_sentence(tmp_path, capsys):
    from maedet.bench.cli import main
    from maedet.zoo.latency import LatencyTable

    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 64, "threads": 1},
        model={"channel_block": 16, "roles": {"stem": [1e-8] * 5, "pw": [1e-8] * 5}},
        validation={"count": 33, "rmspe_pct": "5%"},
    )
    table.save(tmp_path / "t.json")
    assert main(["profile", "--info", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation figure 'rmspe_pct'" in err[0]
