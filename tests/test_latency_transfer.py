"""The validation report's figures and held-out draws, and transferring a table to another target (issue 19)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from maedet.bench.cli import main as bench_main
from maedet.bench.profile_figures import validation_figures, validation_section
from maedet.bench.profile_transfer import adapt_table, class_sums, fit_transfer, role_class
from maedet.bench.profile_validate import held_out_structures, profiled_networks
from maedet.zoo import load_structure
from maedet.zoo.latency import LatencyTable

DATA = Path(__file__).parent / "data"
# The model of a real 1-thread, 320 px ONNX Runtime CPU profile of this project (samples and networks left out).
TABLE_FILE = DATA / "latency_table_cpu320t1.json"


def test_validation_figures_by_hand():
    # relative errors 0, +5%, -10%, -11.1%, +25%: the ±5% and ±10% bounds are inside
    f = validation_figures([1.0, 2.1, 2.7, 4.0, 5.0], [1.0, 2.0, 3.0, 4.5, 4.0])
    assert f["count"] == 5
    assert f["within_5pct"] == 2 / 5 and f["within_10pct"] == 3 / 5
    assert f["rmspe_pct"] == pytest.approx(100 * math.sqrt((0 + 0.05**2 + 0.1**2 + (0.5 / 4.5) ** 2 + 0.25**2) / 5))
    assert f["max_abs_err_pct"] == pytest.approx(25.0)
    assert f["spearman_rho"] == pytest.approx(1 - 6 * 2 / (5 * 24))  # ranks 4 and 5 swapped: Σd² = 2


def test_a_validation_section_has_steady_and_unscaled_figures_and_the_verdict():
    rows = [
        {"name": f"n{i}", "predicted_ms": p, "measured_ms": m, "measured_raw_ms": 1.3 * m}
        for i, (p, m) in enumerate([(10.0, 10.2), (20.0, 19.5), (40.0, 41.0), (80.0, 79.0)])
    ]
    section = validation_section(rows)
    assert section["within_10pct"] == 1.0 and section["meets_goal"] is True
    assert section["unscaled"]["within_10pct"] == 0.0  # 30% slower unscaled
    assert section["unscaled"]["rmspe_pct"] > 20 and [r["name"] for r in section["networks"]] == [
        "n0",
        "n1",
        "n2",
        "n3",
    ]


def test_held_out_networks_cover_the_whole_predicted_range():
    from maedet.bench.profile import sample_structures
    from maedet.bench.profile_validate import POOL_PER_NETWORK

    table = LatencyTable.load(TABLE_FILE)
    picks = held_out_structures(table, 12, seed=7, exclude=set())
    ms = [table.predict_ms(s) for s in picks.values()]
    assert len({s.to_json() for s in picks.values()}) == 12 and ms == sorted(ms)
    pool = [table.predict_ms(s) for s in sample_structures(POOL_PER_NETWORK * 12 + 20, 7, table.input_size)]
    lo, hi = min(pool), max(pool)
    edges = [lo * (hi / lo) ** (i / 12) for i in range(13)]  # 12 equal strata of the log predicted latency
    occupied = {i for i in range(12) if any(edges[i] <= m <= edges[i + 1] for m in pool)}
    covered = {i for i in range(12) if any(edges[i] <= m <= edges[i + 1] for m in ms)}
    assert covered >= occupied  # every stratum the stream reaches gets a network, the ends included
    assert ms[0] <= edges[1] and ms[-1] >= edges[11]
    again = held_out_structures(table, 12, seed=7, exclude={picks["val0"].to_json()})
    assert picks["val0"].to_json() not in {s.to_json() for s in again.values()}


def test_held_out_networks_are_none_the_profile_measured():
    table = LatencyTable.load(TABLE_FILE)
    seen = profiled_networks(table)
    assert len(seen) > 1000  # the profile's training and calibration/validation streams
    picks = held_out_structures(table, 20, seed=101, exclude=seen)
    assert not {s.to_json() for s in picks.values()} & seen


def _slower(table: LatencyTable, conv: float, elementwise: float, per_conv_ms: float) -> LatencyTable:
    """The 'true' other machine: every conv role ×conv, pool and add ×elementwise, a per-convolution cost."""
    roles = {
        role: [c * (elementwise if role_class(role) == "elementwise" else conv) for c in coefs]
        for role, coefs in table.model["roles"].items()
    }
    calibration = {**table.calibration, "per_conv_ms": per_conv_ms}
    return LatencyTable(target=dict(table.target), model={**table.model, "roles": roles}, calibration=calibration)


@pytest.fixture(scope="module")
def source() -> LatencyTable:
    """The real table with an unfused pool and add of realistic size (elementwise a fifth of a network), so the
    elementwise class is measurable at all (on ONNX Runtime CPU the add is fused and the pool is 0.4%)."""
    table = LatencyTable.load(TABLE_FILE)
    roles = dict(table.model["roles"]) | {"pool": [0, 2e-6, 2e-6, 0, 0], "add": [0, 1e-6, 1e-6, 0, 0]}
    model = {**table.model, "roles": roles}
    return LatencyTable(target=dict(table.target), model=model, calibration=table.calibration, source=table.source)


def test_a_transfer_recovers_a_machine_with_slower_convs_and_elementwise_ops(source):
    true = _slower(source, conv=1.7, elementwise=1.2, per_conv_ms=0.05)
    nets = held_out_structures(source, 10, seed=7, exclude=set(), prefix="fit")
    measured_names: list[str] = []

    def measure(networks):
        measured_names.extend(networks)
        return {name: true.predict_ms(s) for name, s in networks.items()}

    table = adapt_table(source, source.target, nets, measure)
    assert measured_names == list(nets)  # each network measured once
    record = table.measurement["transfer"]
    assert record["tied"] is False  # one factor per class predicts left-out networks better here
    factors = record["factors_vs_from"]
    assert factors["pw"] == pytest.approx(1.7, rel=0.03) and factors["spatial"] == pytest.approx(1.7, rel=0.03)
    assert factors["elementwise"] == pytest.approx(1.2, rel=0.05)
    for s in held_out_structures(source, 30, seed=9, exclude=set()).values():
        assert table.predict_ms(s) == pytest.approx(true.predict_ms(s), rel=0.01)
    assert [r["name"] for r in record["networks"]] == list(nets)
    assert record["from"]["sha256"] == source.identity["sha256"]
    saved = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))  # plain data, and a valid table
    assert saved.predict_ms(nets["fit3"]) == pytest.approx(table.predict_ms(nets["fit3"]), rel=1e-12)


def test_a_transfer_on_noisy_measurements_still_predicts_within_a_few_percent(source):
    true = _slower(source, conv=1.7, elementwise=1.2, per_conv_ms=0.05)
    nets = held_out_structures(source, 10, seed=7, exclude=set(), prefix="fit")
    rng = np.random.default_rng(0)
    table = adapt_table(
        source, source.target, nets, lambda n: {k: true.predict_ms(s) * rng.normal(1, 0.03) for k, s in n.items()}
    )
    errors = [table.predict_ms(s) / true.predict_ms(s) - 1 for s in held_out_structures(source, 30, 9, set()).values()]
    assert max(abs(e) for e in errors) < 0.05


def test_a_transfer_on_few_networks_fits_one_factor():
    table = LatencyTable.load(TABLE_FILE)
    nets = list(held_out_structures(table, 3, seed=7, exclude=set()).values())
    measured = [2.0 * table.predict_ms(s) for s in nets]
    fit = fit_transfer(table, nets, measured)
    assert fit.tied and fit.per_conv_ms == 0 and fit.offset_ms == 0 and not fit.loo_rmspe_pct
    assert len(set(fit.factors.values())) == 1
    # with the calibration's offset folded in, the one factor is the ratio of measured to the operator sums
    sums = [sum(class_sums(table, s).values()) for s in nets]
    assert (
        min(m / s for m, s in zip(measured, sums, strict=True))
        <= fit.factors["pw"]
        <= max(m / s for m, s in zip(measured, sums, strict=True))
    )


def _one_line_error(capsys, argv: list[str], words: str) -> None:
    assert bench_main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and err.startswith("maedet-bench: error:")


def test_validate_and_transfer_refuse_bad_input_in_one_sentence(tmp_path, capsys):
    out = str(tmp_path / "new.json")
    table = str(TABLE_FILE)
    _one_line_error(
        capsys, ["profile", "--transfer", table, "--backend", "ort-cuda", "--out", out], "keeps its runtime"
    )
    _one_line_error(
        capsys, ["profile", "--transfer", table, "--precision", "int8", "--out", out], "keeps its precision"
    )
    _one_line_error(capsys, ["profile", "--transfer", str(tmp_path / "none.json"), "--out", out], "none.json")
    _one_line_error(capsys, ["profile", "--transfer", table], "needs --out")
    _one_line_error(capsys, ["profile", "--validate", table, "--threads", "2"], "--threads 2 cannot be given")
    # the table's own target repeated is no error: the command goes on to its --out check
    same = ["--threads", "1", "--input-size", "320", "--backend", "ort-cpu", "--precision", "fp32", "--batch-size", "1"]
    nowhere = str(tmp_path / "none" / "x.json")
    _one_line_error(capsys, ["profile", "--validate", table, *same, "--out", nowhere], "folder")
    _one_line_error(capsys, ["profile", "--validate", table, "--plot", "x.svg"], "must end in .png")
    _one_line_error(capsys, ["profile", "--networks", "5", "--out", out], "go with --validate or --transfer")
    _one_line_error(capsys, ["profile", "--transfer", table, "--out", table], "--transfer table")
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_real_tiny_transfer_resumes_then_validates(tmp_path):
    """ONNX Runtime CPU at 64 px: 2 networks fit the transfer, 1 held out; interrupted after one network, resumed;
    then the new table is validated on 1 fresh network, its earlier validation kept."""
    from maedet.bench.profile_transfer import TransferSettings, transfer_table
    from maedet.bench.profile_validate import validate_table

    out = tmp_path / "t64.json"
    settings = TransferSettings(input_size=64, threads=1, networks=2, validation_nets=1, rounds=1)

    def stop(_n: int) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        transfer_table(TABLE_FILE, out, settings, progress=False, on_step=stop)
    assert list(json.loads((tmp_path / "t64.json.partial").read_text())["units"]) == ["fit0"] and not out.exists()
    steps: list[int] = []
    table = transfer_table(TABLE_FILE, out, settings, progress=False, on_step=steps.append)
    assert steps[0] == 1 and sum(steps) == 2 + 3 + 2 + 1  # fit, S/M/L, ResNet-50/101, held out; fit0 not again
    assert not (tmp_path / "t64.json.partial").exists() and (tmp_path / "t64.validation.png").stat().st_size > 0
    saved = LatencyTable.load(out)
    assert saved.target["input_size"] == 64 and saved.target["backend"] == "ort-cpu"
    record = saved.measurement["transfer"]
    assert record["tied"] and len(record["networks"]) == 2 and record["from"]["target"]["input_size"] == 320
    assert set(saved.references) == {"resnet50", "resnet101", "maedet_s", "maedet_m", "maedet_l"}
    v = saved.validation
    assert v["count"] == 1 + 3 and {r["name"] for r in v["networks"]} == {"val0", "maedet_s", "maedet_m", "maedet_l"}
    for row in v["networks"]:
        assert row["predicted_ms"] == pytest.approx(table.predict_ms(load_structure(row["structure"])), rel=1e-12)

    validated = validate_table(out, 1, out=tmp_path / "v.json", rounds=1, progress=False)
    v2 = validated.validation
    assert v2["count"] == 4 and v2["earlier"]["count"] == 4 and v2["anchor"]["from"] == "the table's"
    assert set(v2["references"]) == {"resnet50", "resnet101"} and v2["references"]["resnet50"]["table_ms"] > 0
    assert (tmp_path / "v.validation.png").exists() and LatencyTable.load(tmp_path / "v.json").validation == v2
    fresh = load_structure(next(r for r in v2["networks"] if r["name"] == "val0")["structure"]).to_json()
    assert fresh not in {load_structure(r["structure"]).to_json() for r in record["networks"]}


def test_info_shows_the_five_percent_share_and_where_a_transfer_came_from(source, tmp_path, capsys):
    nets = held_out_structures(source, 10, seed=7, exclude=set(), prefix="fit")
    true = _slower(source, conv=1.7, elementwise=1.2, per_conv_ms=0.05)
    table = adapt_table(source, source.target, nets, lambda n: {k: true.predict_ms(s) for k, s in n.items()})
    rows: list[dict] = []
    for i, (name, s) in enumerate(nets.items()):  # every other network measured 7% slower: -6.5% errors
        measured = table.predict_ms(s) * (1.07 if i % 2 else 1.0)
        rows.append({"name": name, "predicted_ms": table.predict_ms(s), "measured_ms": measured})
        rows[-1]["measured_raw_ms"] = measured
    table.validation = validation_section(rows)
    path = table.save(tmp_path / "t.json")
    assert bench_main(["profile", "--info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "50% within ±5%, 100% within ±10%" in out
    factors = table.measurement["transfer"]["factors_vs_from"]
    assert f"transferred from {TABLE_FILE.name}" in out and f"pw ×{factors['pw']:.3f}" in out


def test_a_transfer_moves_the_per_size_models_with_their_roles_class(source):
    """A source with a per-size 1×1 model (``pw@40``, 1.4× the role's): the other machine is 1.7× slower on every
    conv, and the transferred table predicts it there too, so the per-size model moved with the ``pw`` factor."""
    regimes = {"pw@40": [1.4 * c for c in source.model["roles"]["pw"]]}
    with_regime = LatencyTable(
        target=dict(source.target),
        model={**source.model, "regimes": regimes},
        calibration=dict(source.calibration),
        source=source.source,
    )
    true = _slower(with_regime, conv=1.7, elementwise=1.0, per_conv_ms=0.0)
    true.model["regimes"] = {"pw@40": [1.7 * c for c in regimes["pw@40"]]}
    true = LatencyTable.from_dict(true.to_dict())
    nets = held_out_structures(with_regime, 10, seed=7, exclude=set(), prefix="fit")
    table = adapt_table(with_regime, with_regime.target, nets, lambda n: {k: true.predict_ms(s) for k, s in n.items()})
    assert table.model["regimes"]["pw@40"] == pytest.approx(
        [c * table.measurement["transfer"]["factors"]["pw"] for c in regimes["pw@40"]]
    )
    for s in held_out_structures(with_regime, 20, seed=9, exclude=set()).values():
        assert table.predict_ms(s) == pytest.approx(true.predict_ms(s), rel=0.02)
