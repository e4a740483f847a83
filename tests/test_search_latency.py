"""Latency in the search: budgets evaluated with a table, relative budgets, resume checks, score JSON, pareto."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import random

import pytest

from maedet.search import (
    Budget,
    GenomeLatency,
    LatencyTarget,
    ParetoSettings,
    Search,
    SearchError,
    SearchSettings,
    SearchSpace,
    parse_latency_budget,
    run_pareto,
    write_pareto,
)
from maedet.search.cli import main
from maedet.search.latency import open_latency_target
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable

# The authors' V100 FP16 predictions at batch 32, 480 px, in ms per image (their seconds per image × 1000), as the
# V100 module computes them from the authors' method (docs/latency_v100.md).
V100_FP16_MS_PER_IMAGE = {
    "maedet_s": 0.46812166567302137,
    "maedet_m": 0.826427609216266,
    "maedet_l": 1.3193377167711182,
    "r50_like_init": 0.27578575625,
}


def hand_made_table(scale: float = 1.0) -> LatencyTable:
    """A small profiled-table object with hand-chosen coefficients (ms per feature unit) and stored references."""
    coefs = [1.0e-8, 2.0e-8, 1.5e-8, 1.0e-8, 0.02]
    roles = {"stem": coefs, "pw": coefs, "k3s1": coefs, "k3s2": coefs, "k5s1": coefs, "k5s2": coefs, "pool": coefs}
    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": 2, "input_size": 224, "threads": 2},
        model={"channel_block": 16, "roles": roles},
        calibration={"scale": scale, "per_conv_ms": 0.03, "offset_ms": 0.5},
    )
    m = table.predict_ms(builtin_structure("maedet_m"))
    table.references = {"resnet50": 0.9 * m, "resnet101": 1.6 * m, "maedet_m": 1.1 * m}
    return table


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    return hand_made_table().save(tmp_path_factory.mktemp("table") / "cpu.json")


@pytest.fixture(scope="module")
def v100():
    return open_latency_target("v100-fp16", batch=32, input_size=480)


def _walk(space: SearchSpace, start, steps: int, seed: int = 1):
    rng, genome, genomes = random.Random(seed), start, []
    for _ in range(steps):
        genome = space.mutate(genome, rng) or genome
        genomes.append(genome)
    return genomes


@pytest.mark.parametrize("which", ["v100", "profiled"])
def test_genome_latency_equals_the_tables_prediction(which, v100):
    target = v100 if which == "v100" else LatencyTarget.of(hand_made_table(scale=1.3))
    init = builtin_structure("r50_like_init")
    space = SearchSpace.from_structure(init)
    genome_ms = GenomeLatency(space, target)
    for genome in _walk(space, space.encode(init), 400):
        assert genome_ms(genome) == pytest.approx(target.predict_ms(space.decode(genome)), rel=1e-12)


def test_score_json_gives_the_authors_v100_figures(capsys):
    assert (
        main(
            [
                "score",
                "maedet_m",
                "--latency-table",
                "v100-fp16",
                "--latency-batch",
                "32",
                "--input-size",
                "480",
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["latency_ms_per_image"] == pytest.approx(V100_FP16_MS_PER_IMAGE["maedet_m"], rel=1e-12)
    assert info["latency_ms"] == pytest.approx(32 * V100_FP16_MS_PER_IMAGE["maedet_m"], rel=1e-12)
    assert info["latency_label"] == "predicted (authors' V100 table)"
    assert info["latency_target"]["batch"] == 32 and info["latency_target"]["input_size"] == 480
    assert info["score"] == pytest.approx(2114.78, abs=0.01)  # the zoo's figures are still there


def test_score_json_with_a_profiled_table(table_file, capsys):
    assert main(["score", "maedet_s", "--latency-table", str(table_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = hand_made_table().predict_ms(builtin_structure("maedet_s"))
    assert info["latency_ms"] == pytest.approx(expected, rel=1e-12)
    assert info["latency_ms_per_image"] == pytest.approx(expected / 2, rel=1e-12)
    assert info["latency_label"].startswith("predicted (profiled: ort-cpu fp32")


def test_latency_budget_rejects_what_the_table_predicts_over(v100):
    init = builtin_structure("r50_like_init")
    limit = 0.8 * 32
    settings = SearchSettings(
        init=init, budget=Budget(layers=91, latency_ms=limit), iterations=600, population=32, latency=v100
    )
    search = Search(settings).run()
    latencies = [v100.predict_ms(search.structure(g)) for _, g in search.population]
    assert max(latencies) <= limit * (1 + 1e-12)
    # the admits check says no exactly where the prediction is over
    space = search.space
    checked = set()
    for genome in _walk(space, search.best[1], 300, seed=3):  # the best sits near the limit: the walk crosses it
        ms = v100.predict_ms(space.decode(genome))
        if search.evaluator.layers(genome) <= 91 and abs(ms - limit) > 1e-9:
            assert settings.budget.admits(search.evaluator, genome, search.latency) == (ms <= limit)
            checked.add(ms <= limit)
    assert checked == {True, False}
    # an initial structure over the latency budget is refused with the figure
    with pytest.raises(SearchError, match="predicted latency"):
        Search(dataclasses.replace(settings, budget=Budget(latency_ms=5.0)))


def test_the_latency_budget_binds():
    target = LatencyTarget.of(hand_made_table())
    init = builtin_structure("r50_like_init")
    limit = 1.3 * target.predict_ms(init)
    free = Search(SearchSettings(init=init, budget=Budget(layers=91), iterations=800, population=32, latency=target))
    bound = Search(
        SearchSettings(
            init=init, budget=Budget(layers=91, latency_ms=limit), iterations=800, population=32, latency=target
        )
    )
    free.run()
    bound.run()
    assert target.predict_ms(free.structure(free.best[1])) > limit  # without the limit the search goes past it
    assert all(target.predict_ms(bound.structure(g)) <= limit for _, g in bound.population)


def test_relative_budgets(v100):
    table = hand_made_table()
    target = LatencyTarget.of(table)
    assert parse_latency_budget("1.0xresnet50", target) == table.references["resnet50"]
    assert parse_latency_budget("0.8xresnet101", target) == pytest.approx(0.8 * table.references["resnet101"])
    assert parse_latency_budget("25.6", target) == 25.6
    with pytest.raises(SearchError, match="no reference 'vgg16'; it stores maedet_m, resnet101, resnet50"):
        parse_latency_budget("1xvgg16", target)
    with pytest.raises(SearchError, match="stores no measured reference latencies") as err:
        parse_latency_budget("1.0xresnet50", v100)
    assert str(err.value).count(".") <= 3 and "\n" not in str(err.value)
    for bad in ("fast", "-3", "0x resnet50"):
        with pytest.raises(SearchError):
            parse_latency_budget(bad, target)


def test_a_latency_budget_needs_a_table():
    with pytest.raises(SearchError, match="needs a latency table"):
        Search(SearchSettings(init=builtin_structure("r50_like_init"), budget=Budget(latency_ms=20.0)))


def test_run_with_a_relative_budget_reports_latency(table_file, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--latency-table", str(table_file), "--budget-latency", "1.0xresnet50", "--budget-layers", "91"]
    assert main([*args, "--iterations", "300", "--population", "32", "--quiet", "--out", str(out)]) == 0
    table = LatencyTable.load(table_file)
    best = json.loads((out / "best.json").read_text())
    assert best["budget"]["latency_ms"] == table.references["resnet50"]
    assert best["latency_ms"] <= best["budget"]["latency_ms"]
    assert best["latency_ms"] == pytest.approx(table.predict_ms(Structure.from_dict(best["structure"])), rel=1e-12)
    assert best["latency_ms_per_image"] == pytest.approx(best["latency_ms"] / 2)
    assert best["latency_label"] == table.label and best["latency_target"] == table.target
    assert best["latency_table"]["table"] == "profiled" and len(best["latency_table"]["sha256"]) == 64
    with (out / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["best_latency_ms"]) == pytest.approx(best["latency_ms"], rel=1e-5)
    population = json.loads((out / "population.json").read_text())
    assert all(member["latency_ms"] <= best["budget"]["latency_ms"] for member in population)


def test_resume_with_another_table_names_the_setting(table_file, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--budget-latency", "60", "--budget-layers", "91", "--iterations", "100", "--quiet", "--out", str(out)]
    assert main(["run", "--latency-table", str(table_file), *common]) == 0
    other = hand_made_table(scale=1.05).save(tmp_path / "other.json")
    assert main(["run", "--latency-table", str(other), *common, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "latency_table.sha256" in err and err.count("\n") == 1
    v100_args = ["--latency-batch", "32", "--input-size", "480"]
    assert main(["run", "--latency-table", "v100-fp16", *v100_args, *common, "--resume"]) == 2
    assert "latency_table.table" in capsys.readouterr().err


def test_cli_latency_errors_are_one_sentence(capsys):
    cases = [
        (["run", "--budget-latency", "20", "--out", "x"], "needs a --latency-table"),
        (["run", "--latency-table", "v100-fp16", "--budget-latency", "20", "--out", "x"], "needs a batch size"),
        (["score", "maedet_m", "--latency-batch", "32"], "needs a --latency-table"),
        (["pareto", "--out", "x"], "pareto needs a --latency-table"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_pareto_writes_the_front(table_file, tmp_path):
    out = tmp_path / "pareto"
    argv = ["pareto", "--latency-table", str(table_file), "--points", "3", "--iterations", "150"]
    assert main([*argv, "--population", "16", "--budget-layers", "91", "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "pareto.json").read_text())
    table = LatencyTable.load(table_file)
    published = {n: table.predict_ms(builtin_structure(n)) for n in ("maedet_s", "maedet_m", "maedet_l")}
    budgets = [p["budget_ms"] for p in result["points"]]
    assert budgets[0] == pytest.approx(min(published.values())) and budgets[-1] == pytest.approx(
        max(published.values())
    )
    assert budgets[1] == pytest.approx((budgets[0] * budgets[2]) ** 0.5)  # geometric
    for point in result["points"]:
        assert point["latency_ms"] <= point["budget_ms"] and point["candidates"] == 150
    front = sorted((p for p in result["points"] if p["on_front"]), key=lambda p: p["latency_ms"])
    assert front and all(a["score"] < b["score"] for a, b in itertools.pairwise(front))
    refs = result["references"]
    assert refs["published"]["MAE-DET-M"]["measured_ms"] == table.references["maedet_m"]
    assert refs["published"]["MAE-DET-S"]["measured_ms"] is None
    assert refs["published"]["MAE-DET-L"]["predicted_ms"] == pytest.approx(published["maedet_l"])
    assert refs["resnets_measured_ms"] == {
        "ResNet-50": table.references["resnet50"],
        "ResNet-101": table.references["resnet101"],
    }
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_api_on_the_v100_table(v100, tmp_path):
    settings = ParetoSettings(
        init=builtin_structure("r50_like_init"), points=2, iterations=64, population=16, layers=91
    )
    result = run_pareto(v100, settings)
    ms = [p["latency_ms_per_image"] for p in result["points"]]
    assert len(ms) == 2 and ms[0] <= V100_FP16_MS_PER_IMAGE["maedet_s"] + 1e-12
    assert result["points"][-1]["budget_ms_per_image"] == pytest.approx(V100_FP16_MS_PER_IMAGE["maedet_l"])
    assert result["references"]["resnets_measured_ms"] == {}
    paths = write_pareto(result, tmp_path)
    assert [p.name for p in paths] == ["pareto.json", "pareto.png"] and all(p.stat().st_size > 0 for p in paths)


@pytest.mark.slow
def test_a_latency_search_resumes_to_the_uninterrupted_result(table_file, tmp_path):
    common = ["run", "--latency-table", str(table_file), "--budget-latency", "60", "--budget-layers", "91"]
    common += ["--population", "16", "--quiet"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*common, "--iterations", "320", "--out", str(whole)]) == 0
    assert main([*common, "--iterations", "160", "--out", str(parts)]) == 0
    assert main([*common, "--iterations", "320", "--resume", "--out", str(parts)]) == 0
    first, second = (json.loads((out / "best.json").read_text()) for out in (whole, parts))
    assert first["structure"] == second["structure"] and first["latency_ms"] == second["latency_ms"]
    assert (whole / "history.csv").read_text().count("\n") == (parts / "history.csv").read_text().count("\n")


def test_searching_with_a_table_that_missed_its_goal_warns(tmp_path, capsys):
    """run, score and pareto say when the table's validation missed its goal (and when it is unknown)."""
    missed = hand_made_table()
    missed.validation = {"count": 33, "rmspe_pct": 21.8, "within_10pct": 0.36, "spearman_rho": 0.949}
    missed.validation |= {"meets_goal": False}
    met = hand_made_table()
    met.validation = {"count": 33, "rmspe_pct": 4.5, "within_10pct": 0.94, "spearman_rho": 0.997, "meets_goal": True}
    paths = {name: t.save(tmp_path / f"{name}.json") for name, t in (("missed", missed), ("met", met))}
    paths["unknown"] = hand_made_table().save(tmp_path / "unknown.json")
    argv = {
        "score": ["score", "maedet_s", "--json"],
        "run": ["run", "--budget-layers", "91", "--iterations", "64", "--population", "16"],
        "pareto": ["pareto", "--points", "1", "--iterations", "32", "--population", "16"],
    }
    for command, args in argv.items():
        out = ["--out", str(tmp_path / f"{command}-out")] if command != "score" else []
        assert main([*args, "--latency-table", str(paths["missed"]), *out]) == 0
        err = capsys.readouterr().err
        assert "warning:" in err and "misses its validation goal" in err and "36% within ±10%" in err
    assert main([*argv["score"], "--latency-table", str(paths["met"])]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*argv["score"], "--latency-table", str(paths["unknown"])]) == 0
    assert "how well it predicts is unknown" in capsys.readouterr().err


def test_pareto_without_a_layer_budget_compares_with_its_markers(table_file, tmp_path, capsys):
    """The default layer limit is the deepest marker's, so the front never runs deeper than MAE-DET-S/M/L; the JSON,
    the log and the table say the limit and the resolution the FLOPs are counted at."""
    from maedet.zoo import cost

    out = tmp_path / "pareto"
    argv = ["pareto", "--latency-table", str(table_file), "--points", "2", "--iterations", "400"]
    assert main([*argv, "--population", "16", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    deepest = max(cost(builtin_structure(n)).layers for n in ("maedet_s", "maedet_m", "maedet_l"))
    result = json.loads((out / "pareto.json").read_text())
    settings = result["settings"]
    assert settings["layers"] == deepest and "MAE-DET-L" in settings["layers_source"]
    assert settings["flops_resolution"] == 224
    assert f"limited to {deepest} conv layers" in err and "FLOPs are counted at 224×224 px" in err
    assert "GFLOPs @224 px" in err
    for point in result["points"]:
        assert point["layers"] <= deepest
        assert point["flops"] == cost(Structure.from_dict(point["structure"]), 224).flops
