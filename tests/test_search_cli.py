"""``maedet-search``: outputs of ``run``, ``score`` and the one-sentence errors with exit code 2."""

from __future__ import annotations

import csv
import json

import pytest

from maedet.search.cli import main
from maedet.zoo import Structure, builtin_structure, load_structure, official_flops

BEST_KEYS = {
    "structure",
    "score",
    "stage_scores",
    "flops",
    "gmacs",
    "params",
    "layers",
    "budget",
    "seed",
    "candidates",
    "wall_s",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    code = main(
        ["run", "--preset", "maedet-s", "--iterations", "2000", "--population", "64", "--quiet", "--out", str(out)]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_run_writes_every_output(finished_run):
    out = finished_run
    best = json.loads((out / "best.json").read_text())
    assert set(best) == BEST_KEYS
    structure = Structure.from_dict(best["structure"])
    assert best["structure"]["format"] == "maedet-structure/1"
    assert best["candidates"] == 2000 and best["seed"] == 0
    assert best["flops"] == official_flops(structure, 480) <= best["budget"]["flops"] == 10_992_870_000
    assert best["layers"] <= best["budget"]["layers"] == 79
    assert list(best["stage_scores"]) == ["stem", "c2", "c3", "c4", "c5"]
    # the authors' format reads back to the same structure
    assert load_structure(out / "best_structure.txt") == structure
    population = json.loads((out / "population.json").read_text())
    assert population[0]["score"] == best["score"] and len(population) == 32
    with (out / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert int(rows[-1]["candidates"]) == 2000
    assert float(rows[-1]["best_score"]) == pytest.approx(best["score"], abs=1e-6)
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_is_reproducible_and_resumable(finished_run, tmp_path):
    # the first half through the CLI, then --resume with the full count: the same best structure, byte for byte
    args = ["run", "--preset", "maedet-s", "--population", "64", "--quiet", "--checkpoint-every", "500"]
    assert main([*args, "--iterations", "1000", "--out", str(tmp_path)]) == 0
    assert main([*args, "--iterations", "2000", "--resume", "--out", str(tmp_path)]) == 0
    ours = json.loads((tmp_path / "best.json").read_text())
    reference = json.loads((finished_run / "best.json").read_text())
    assert json.dumps(ours["structure"]) == json.dumps(reference["structure"])
    assert (tmp_path / "best_structure.txt").read_bytes() == (finished_run / "best_structure.txt").read_bytes()


def test_score_json(tmp_path, capsys):
    path = tmp_path / "m.txt"
    path.write_text(builtin_structure("maedet_m").to_authors_text())
    assert main(["score", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"score", "stage_scores", "flops", "gmacs", "params", "layers"}
    assert info["score"] == pytest.approx(2114.782868, abs=1e-6)
    assert (info["flops"], info["params"], info["layers"]) == (20_299_923_000, 25_843_536, 91)
    assert main(["score", str(path), "--json", "--resolution", "224"]) == 0
    assert json.loads(capsys.readouterr().out)["flops"] == 4_420_872_120


def test_score_table(capsys):
    assert main(["score", "r50_like_init"]) == 0
    out = capsys.readouterr().out
    assert "400.726108" in out and "GMACs" in out


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("maedet-search: error: ")
    return err


def test_errors_are_one_sentence_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": [{"class": "ConvKXBNRELU", "in": 3, "out": 32, "s": 2}]}')
    assert "field 'k' is missing" in _error(capsys, ["score", str(bad)])
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a structure {")
    assert "neither JSON nor a Python literal" in _error(capsys, ["score", str(garbage)])
    out = str(tmp_path / "o")
    assert "over budget" in _error(capsys, ["run", "--budget-flops", "1e9", "--iterations", "10", "--out", out])
    assert "impossible budget" in _error(capsys, ["run", "--budget-layers", "0", "--iterations", "10", "--out", out])
    assert "impossible budget" in _error(capsys, ["run", "--budget-layers", "9", "--iterations", "10", "--out", out])
    assert "--preset or at least one" in _error(capsys, ["run", "--iterations", "10", "--out", out])
    init_error = _error(capsys, ["run", "--preset", "maedet-s", "--init", str(bad), "--out", out])
    assert init_error == "maedet-search: error: bad.json: block 0 (ConvKXBNRELU): field 'k' is missing."
    assert "checkpoint" in _error(capsys, ["run", "--preset", "maedet-s", "--resume", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "o" / "best.json").exists()


def test_ctrl_c_leaves_a_resumable_state(tmp_path, capsys):
    """A real SIGINT to this process while ``main`` runs (in-process: a subprocess would spend most of the test
    importing torch); the handler stops at the next batch, writes the outputs and exits 130."""
    import os
    import signal
    import threading
    import time

    from maedet.search.evolution import CHECKPOINT_NAME

    out = tmp_path / "run"

    def interrupt_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_first_checkpoint, daemon=True).start()
    argv = ["run", "--preset", "maedet-s", "--iterations", "5000000", "--checkpoint-every", "1000", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    state = json.loads((out / CHECKPOINT_NAME).read_text())
    assert 1000 <= state["candidates"] < 5_000_000
    assert json.loads((out / "best.json").read_text())["candidates"] == state["candidates"]
    assert main([*argv[:4], "1200", *argv[5:], "--resume", "--out", str(out)]) == 0
    assert json.loads((out / "best.json").read_text())["candidates"] == max(1200, state["candidates"])


def test_version_and_help(capsys):
    import maedet

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"maedet-search {maedet.__version__}"
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text
    assert "--population POPULATION\n                        structures kept (default: 256)" in text
    assert "level ratios stem,C2,C3,C4,C5 (default: 0,0,1,1,6)" in text


def test_usage_errors_are_one_line(capsys):
    assert "invalid choice: 'maedet-xl'" in _error(capsys, ["run", "--preset", "maedet-xl", "--out", "x"])
    assert "a budget must be a finite number" in _error(capsys, ["run", "--budget-flops", "inf", "--out", "x"])
    assert "not allowed with argument --resume" in _error(capsys, ["run", "--resume", "--force", "--out", "x"])


SMALL_RUN = ["run", "--preset", "maedet-s", "--iterations", "200", "--population", "16", "--quiet"]


def test_an_earlier_search_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = _error(capsys, [*SMALL_RUN, "--seed", "1", "--out", str(out)])
    assert "already holds a search" in err and "--resume" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*SMALL_RUN, "--seed", "1", "--force", "--out", str(out)]) == 0
    assert json.loads((out / "best.json").read_text())["seed"] == 1
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in _error(capsys, [*SMALL_RUN, "--out", str(tmp_path / "file")])


def test_resume_names_the_setting_that_differs(tmp_path, capsys):
    assert main([*SMALL_RUN, "--out", str(tmp_path)]) == 0
    err = _error(capsys, [*SMALL_RUN, "--seed", "3", "--resume", "--out", str(tmp_path)])
    assert "different search settings (seed: 0 in the checkpoint, 3 now)" in err
    err = _error(capsys, [*SMALL_RUN, "--budget-params", "3e7", "--resume", "--out", str(tmp_path)])
    assert "(budget.params: null in the checkpoint, 30000000 now)" in err
