"""The evolutionary search: budgets, duplicates, counting, determinism, resume, workers and Ray."""

from __future__ import annotations

import json

import pytest

from maedet.search import (
    Budget,
    ForwardOptions,
    LocalProcessExecutor,
    Search,
    SearchError,
    SearchSettings,
    closed_form_score,
    preset_budget,
)
from maedet.search.evolution import CHECKPOINT_NAME
from maedet.zoo import Stage, Stem, Structure, builtin_structure


@pytest.fixture(scope="module")
def init():
    return builtin_structure("r50_like_init")


def _settings(init, **kw):
    base = {"init": init, "budget": preset_budget("maedet-s"), "iterations": 3000, "population": 64, "seed": 0}
    base.update(kw)
    return SearchSettings(**base)


def test_population_within_budget_unique_and_counted(init):
    settings = _settings(init, budget=Budget(flops=9_000_000_000, layers=49, params=15_000_000))
    search = Search(settings).run()
    assert search.candidates == settings.iterations  # only evaluated candidates count, exactly the requested number
    assert search.history[-1].candidates == settings.iterations
    population = search.population
    assert len(population) == settings.population
    genomes = [g for _, g in population]
    assert len(set(genomes)) == len(genomes)  # no duplicates
    scores = [s for s, _ in population]
    assert scores == sorted(scores, reverse=True)
    for score, genome in population:
        structure = search.structure(genome)
        assert settings.budget.violations(structure) == []
        assert score == pytest.approx(closed_form_score(structure).score, abs=1e-9)
    assert population[0][0] > closed_form_score(init).score


def test_search_beats_the_init_and_grows_with_candidates(init):
    short = Search(_settings(init, iterations=500)).run()
    long = Search(_settings(init, iterations=4000)).run()
    assert long.best[0] >= short.best[0] > closed_form_score(init).score
    best_over_time = [row.best_score for row in long.history]
    assert best_over_time == sorted(best_over_time)


def test_same_seed_same_result_other_seed_differs(init):
    a = Search(_settings(init, iterations=2000)).run()
    b = Search(_settings(init, iterations=2000)).run()
    c = Search(_settings(init, iterations=2000, seed=1)).run()
    assert a.structure(a.best[1]).to_json() == b.structure(b.best[1]).to_json()
    assert a.population == b.population
    assert a.population != c.population


def test_resume_gives_the_uninterrupted_result(init, tmp_path):
    settings = _settings(init, iterations=4000, checkpoint_every=700)
    whole = Search(settings).run()

    first = Search(settings)
    first.run(stop=lambda: first.candidates >= 2000, checkpoint_dir=tmp_path)
    assert 2000 <= first.candidates < settings.iterations
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed = Search.resume(settings, tmp_path / CHECKPOINT_NAME).run(checkpoint_dir=tmp_path)
    assert resumed.candidates == whole.candidates
    assert resumed.population == whole.population
    assert resumed.structure(resumed.best[1]).to_json() == whole.structure(whole.best[1]).to_json()
    # the final checkpoint sits at the last full batch (4000 is not a batch boundary); resuming it replays the
    # short last batch to the same end, and a longer run resumes from it as if never stopped
    state = json.loads((tmp_path / CHECKPOINT_NAME).read_text())
    assert settings.iterations - settings.batch < state["candidates"] < settings.iterations
    again = Search.resume(settings, tmp_path / CHECKPOINT_NAME).run()
    assert again.population == whole.population

    other = _settings(init, iterations=4000, seed=5)
    with pytest.raises(SearchError, match=r"different search settings \(seed: 0 in the checkpoint, 5 now\)"):
        Search.resume(other, tmp_path / CHECKPOINT_NAME)


def test_periodic_checkpoint_is_resumable(init, tmp_path):
    settings = _settings(init, iterations=1500, checkpoint_every=500)

    class Crash(Exception):
        pass

    search = Search(settings)

    def crash_after_checkpoint(s):
        if s.candidates >= 1100:
            raise Crash  # like a killed process: only the periodic checkpoint survives

    with pytest.raises(Crash):
        search.run(progress=crash_after_checkpoint, checkpoint_dir=tmp_path)
    state = json.loads((tmp_path / CHECKPOINT_NAME).read_text())
    assert 1000 <= state["candidates"] < 1100
    resumed = Search.resume(settings, tmp_path / CHECKPOINT_NAME).run()
    assert resumed.population == Search(settings).run().population


def test_init_over_budget_and_impossible_budgets(init):
    with pytest.raises(SearchError, match="initial structure is over budget"):
        Search(_settings(init, budget=Budget(flops=1_000_000_000)))
    with pytest.raises(SearchError, match="impossible budget"):
        Search(_settings(init, budget=Budget(layers=10)))
    with pytest.raises(ValueError, match="impossible budget"):
        Budget(params=0)


@pytest.mark.slow
def test_workers_give_the_same_result_as_one_process(init):
    settings = _settings(init, iterations=600, population=32)
    serial = Search(settings).run()
    executor = LocalProcessExecutor(2)
    try:
        parallel = Search(settings).run(executor)
    finally:
        executor.close()
    assert parallel.population == serial.population


TINY = Structure(Stem(3, 16, 2, 3), (Stage(16, 32, 2, 3, 1, 16), Stage(32, 64, 2, 3, 1, 16)))


def _forward_settings(**kw):
    opts = ForwardOptions(batch=1, resolution=32, repeats=1, seed=0)
    return SearchSettings(
        init=TINY,
        budget=Budget(flops=250_000_000, layers=13),
        ratios=(0, 1, 1),
        population=8,
        iterations=12,
        score="forward",
        forward=opts,
        batch=6,
        **kw,
    )


def test_forward_score_search_runs_and_is_deterministic():
    a = Search(_forward_settings()).run()
    b = Search(_forward_settings()).run()
    assert a.candidates == 12
    assert a.population == b.population


@pytest.mark.slow
def test_forward_score_on_local_ray(monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional extra 'distributed')")
    from maedet.search import RayExecutor

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # a local test cluster reports nowhere
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor()
        on_ray = Search(_forward_settings()).run(executor)
        executor.close()
    finally:
        ray.shutdown()
    here = Search(_forward_settings()).run()
    assert on_ray.candidates == 12
    assert [g for _, g in on_ray.population] == [g for _, g in here.population]


def test_checkpoint_seen_set_holds_sha256_genome_ids(init, tmp_path):
    """The seen set is stored as SHA-256 content ids of the genomes, not interpreter hashes (which may collide and
    which no other interpreter need reproduce)."""
    import base64
    import hashlib

    Search(_settings(init, iterations=300)).run(checkpoint_dir=tmp_path)
    state = json.loads((tmp_path / CHECKPOINT_NAME).read_text())
    raw = base64.b64decode(state["seen"])
    assert len(raw) % 32 == 0
    stored = {raw[i : i + 32] for i in range(0, len(raw), 32)}
    assert len(stored) == state["candidates"]  # every evaluated candidate once, none dropped by a collision
    for _score, genes in state["population"]:
        assert hashlib.sha256(",".join(map(str, genes)).encode()).digest() in stored


def test_checkpoint_of_the_interpreter_hash_format_is_refused_in_one_sentence(init, tmp_path):
    Search(_settings(init, iterations=100)).run(checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    state = json.loads(path.read_text())
    state["format"] = "maedet-search-checkpoint/1"
    path.write_text(json.dumps(state))
    with pytest.raises(SearchError) as caught:
        Search.resume(_settings(init, iterations=100), path)
    message = str(caught.value)
    assert "'maedet-search-checkpoint/1'" in message and "--force" in message
    assert message.count(". ") == 0 and message.endswith(".")
