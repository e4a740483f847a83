"""Several devices at once: one Pareto front per latency table, each priced on the others (issue 19)."""

from __future__ import annotations

import json

import pytest

from maedet.search.cli import main
from maedet.search.pareto_targets import target_names
from maedet.zoo import Structure
from maedet.zoo.latency import LatencyTable


def _table(pw: float, spatial: float, per_conv_ms: float) -> LatencyTable:
    """A small profiled-table object: 1×1 convs and spatial convs priced apart, so two tables rank differently."""

    def coefs(per_mac: float) -> list[float]:
        return [per_mac, 2.0e-8, 1.5e-8, 1.0e-8, 0.02]

    roles = {"stem": coefs(spatial), "pw": coefs(pw), "pool": coefs(1e-8)}
    roles |= {f"k{k}s{s}": coefs(spatial * (k / 3) ** 2) for k in (3, 5) for s in (1, 2)}
    return LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 1, "input_size": 224, "threads": 1},
        model={"channel_block": 16, "roles": roles},
        calibration={"scale": 1.0, "per_conv_ms": per_conv_ms, "offset_ms": 0.5},
        validation={"count": 33, "rmspe_pct": 4.5, "within_10pct": 0.94, "spearman_rho": 0.997, "meets_goal": True},
    )


def test_table_names_are_stems_told_apart_by_folder_then_number():
    assert target_names(["x/cpu.json", "y/cpu.json", "z.json"]) == ["x-cpu", "y-cpu", "z"]
    assert target_names(["x/cpu.json", "x/cpu.json"]) == ["x-cpu-1", "x-cpu-2"]
    assert target_names(["v100-fp16", "runs/a b.json"]) == ["v100-fp16", "a_b"]


def test_pareto_with_two_tables_writes_a_front_per_target_priced_on_both(tmp_path):
    tables = {
        "macs": _table(pw=1.0e-8, spatial=1.0e-8, per_conv_ms=0.01),  # pays for MACs
        "layers": _table(pw=0.2e-8, spatial=3.0e-8, per_conv_ms=0.3),  # pays for spatial convs and every layer
    }
    paths = {name: t.save(tmp_path / f"{name}.json") for name, t in tables.items()}
    out = tmp_path / "fronts"
    argv = ["pareto", "--latency-table", str(paths["macs"]), "--latency-table", str(paths["layers"])]
    argv += ["--points", "3", "--iterations", "200", "--population", "16", "--budget-layers", "91", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # the lock file aside
    per_table = [f"pareto-{n}.{ext}" for n in ("layers", "macs") for ext in ("json", "png")]
    assert names == [*per_table, "targets.json", "targets.png"]
    cross = json.loads((out / "targets.json").read_text())
    assert list(cross["fronts"]) == ["macs", "layers"]
    for name, table in tables.items():
        result = json.loads((out / f"pareto-{name}.json").read_text())
        assert result["latency_table"] == table.identity  # each front was searched with its own table
        points = result["points"]
        for p in points:
            assert p["latency_ms"] == pytest.approx(table.predict_ms(Structure.from_dict(p["structure"])), rel=1e-12)
            assert p["latency_ms"] <= p["budget_ms"] * (1 + 1e-12)
        front = [p for p in points if p["on_front"]]
        assert front
        for p in front:  # non-dominated under its own table
            assert not any(q["latency_ms"] <= p["latency_ms"] and q["score"] > p["score"] for q in points)
        rows = cross["fronts"][name]  # its front over every sweep's points, non-dominated under its own table
        own = [row["predicted_ms"][name] for row in rows]
        assert own == sorted(own) and [r["score"] for r in rows] == sorted(r["score"] for r in rows)
        every = [q for n in tables for q in json.loads((out / f"pareto-{n}.json").read_text())["points"]]
        for row in rows:
            assert row["searched_for"] in tables
            assert not any(
                table.predict_ms(Structure.from_dict(q["structure"])) <= row["predicted_ms"][name] * (1 + 1e-12)
                and q["score"] > row["score"]
                for q in every
            )
        assert max(r["score"] for r in rows) >= max(p["score"] for p in front)
        for row in rows:  # the cross figures are the tables' own predictions
            structure = Structure.from_dict(row["structure"])
            for other, other_table in tables.items():
                assert row["predicted_ms"][other] == pytest.approx(other_table.predict_ms(structure), rel=1e-12)
    budgets = {n: json.loads((out / f"pareto-{n}.json").read_text())["points"][0]["budget_ms"] for n in tables}
    assert budgets["macs"] != pytest.approx(budgets["layers"])  # each target swept its own budgets
    assert (out / "targets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_with_a_missing_table_says_so_and_writes_nothing(tmp_path, capsys):
    good = _table(1e-8, 1e-8, 0.01).save(tmp_path / "good.json")
    out = tmp_path / "fronts"
    argv = ["pareto", "--latency-table", str(good), "--latency-table", str(tmp_path / "gone.json"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gone.json" in err and err.count("\n") == 1
    assert not out.exists()
