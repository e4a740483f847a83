"""A tiny but real profile on ONNX Runtime CPU: pieces exported and timed, fitted, validated, resumed."""

from __future__ import annotations

import json

import pytest

from maedet.bench.profile import ProfileSettings, profile_target, sample_structures, validation_figures
from maedet.errors import MaeDetError
from maedet.zoo.latency import load_latency_table

TINY = ProfileSettings(input_size=64, pieces=16, calibration_nets=2, validation_nets=3, rounds=1, threads=1)


class Interrupt(Exception):
    pass


def test_validation_figures_by_hand():
    f = validation_figures([1.0, 2.2, 2.7, 4.0], [1.0, 2.0, 3.0, 4.5])
    assert f["within_10pct"] == 0.75  # +10% and -10% are inside; -11.1% is out
    assert f["spearman_rho"] == pytest.approx(1.0)
    assert f["rmspe_pct"] == pytest.approx(100 * ((0 + 0.01 + 0.01 + (0.5 / 4.5) ** 2) / 4) ** 0.5)


def test_sampled_structures_are_distinct_and_span_sizes():
    from maedet.zoo import macs

    nets = sample_structures(12, seed=0, resolution=224)
    assert len({n.to_json() for n in nets}) == 12
    costs = sorted(macs(n, 224, 224) for n in nets)
    assert costs[-1] > 3 * costs[0]


def test_tiny_profile_runs_resumes_and_predicts(tmp_path):
    out = tmp_path / "t.json"
    steps: list[int] = []

    def stop_after_first_group(n: int) -> None:
        steps.append(n)
        raise Interrupt

    with pytest.raises(Interrupt):
        profile_target(out, TINY, progress=False, on_step=stop_after_first_group)
    partial = json.loads((tmp_path / "t.json.partial").read_text())
    measured_before = len(partial["pieces"])
    assert 0 < measured_before < 16 and not out.exists()

    resumed: list[int] = []
    table = profile_target(out, TINY, progress=False, on_step=resumed.append)
    assert resumed[0] == measured_before  # the first step reports what was already there, nothing re-measured
    assert not (tmp_path / "t.json.partial").exists()

    again = load_latency_table(out)
    assert again.target["backend"] == "ort-cpu" and again.target["input_size"] == 64
    assert set(again.references) >= {"resnet50", "resnet101", "maedet_s", "maedet_m", "maedet_l"}
    v = again.validation
    assert v["count"] == 3 + 3 and 0 <= v["within_10pct"] <= 1 and v["rmspe_pct"] >= 0
    for row in v["networks"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] == pytest.approx(
            table.predict_ms(__import__("maedet").zoo.load_structure(row["structure"]))
        )


def test_a_partial_profile_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "t.json"
    (tmp_path / "t.json.partial").write_text(
        json.dumps({"format": "maedet-latency-profile-partial/1", "settings": {"input_size": 999}})
    )
    with pytest.raises(MaeDetError, match="other settings"):
        profile_target(out, TINY, progress=False)


def test_bad_settings_get_one_sentence():
    with pytest.raises(MaeDetError, match="backend"):
        ProfileSettings(backend="tpu")
    with pytest.raises(MaeDetError, match="INT8"):
        ProfileSettings(backend="ort-cuda", precision="int8")


def test_profile_cli_info_and_errors(tmp_path, capsys):
    from maedet.bench.cli import main
    from maedet.zoo.latency import LatencyTable

    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 64, "threads": 1},
        model={k: [1e-8] * 7 for k in ("stem", "first", "rest")},
        validation={"count": 33, "rmspe_pct": 5.0, "within_10pct": 0.9, "spearman_rho": 0.97},
        references={"resnet50": 3.5},
    )
    table.save(tmp_path / "t.json")
    assert main(["profile", "--info", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "RMSPE 5.0%" in out and "90% within ±10%" in out and "resnet50 3.50 ms" in out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["profile", "--info", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maedet-bench: error:")
    assert main(["profile", "--backend", "ort-cpu"]) == 2
