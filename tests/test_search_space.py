"""Search space: genome round trip, mutation and its constraints, and the hot-path cost/score twins of the zoo."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from maedet.search import Budget, SearchSpace, closed_form_score, preset_budget
from maedet.search.evaluator import GenomeEvaluator
from maedet.search.space import round8
from maedet.zoo import builtin_structure, conv_layers, macs, official_flops, param_count


@pytest.fixture(scope="module")
def init():
    return builtin_structure("r50_like_init")


@pytest.fixture(scope="module")
def space(init):
    return SearchSpace.from_structure(init, 480)


def _walk(space, start, steps, seed):
    rng = random.Random(seed)
    genome = space.encode(start)
    out = []
    for _ in range(steps):
        child = space.mutate(genome, rng)
        if child is not None:
            out.append((genome, child))
            genome = child
    return out


def test_encode_decode_round_trip(space, init):
    assert space.decode(space.encode(init)) == init
    with pytest.raises(ValueError, match="strides differ"):
        space.encode(builtin_structure("maedet_s"))


def test_evaluator_costs_and_score_equal_the_zoo(space, init):
    evaluator = GenomeEvaluator(space, (0, 0, 1, 1, 6))
    for _, genome in _walk(space, init, 600, seed=5)[::3]:
        structure = space.decode(genome)
        assert evaluator.macs_and_flops(genome, 480)[1] == official_flops(structure, 480)
        assert evaluator.macs_and_flops(genome, 224)[0] == macs(structure, 224)
        assert evaluator.params(genome) == param_count(structure)
        assert evaluator.layers(genome) == conv_layers(structure)
        assert evaluator.score(genome) == pytest.approx(closed_form_score(structure).score, abs=1e-9)


def test_evaluator_figures_match_design_table():
    for name, flops480, params, layers in (
        ("maedet_s", 10_992_870_000, 21_233_120, 79),
        ("maedet_m", 20_299_923_000, 25_843_536, 91),
        ("maedet_l", 34_494_619_500, 43_879_552, 109),
    ):
        s = builtin_structure(name)
        sp = SearchSpace.from_structure(s)
        ev = GenomeEvaluator(sp, (0, 0, 1, 1, 6))
        g = sp.encode(s)
        assert (ev.macs_and_flops(g, 480)[1], ev.params(g), ev.layers(g)) == (flops480, params, layers)


def test_mutation_keeps_a_valid_structure_valid(space, init):
    # the R50-like init breaks out ≤ 4·in in its first stage; two legal steps repair it, after which every
    # mutation must stay inside the space
    rng = random.Random(0)
    genome = space.encode(init)
    while space.violations(genome):
        genome = space.mutate(genome, rng) or genome
    for _ in range(3000):
        child = space.mutate(genome, rng)
        if child is None:
            continue
        assert space.violations(child) == [], (genome, child)
        assert sum(a != b for a, b in zip(genome, child, strict=True)) <= 2  # one field (+ btn following out)
        space.decode(child)  # a valid Structure
        genome = child


def test_every_block_and_field_mutates_including_the_last(space, init):
    changed = Counter()
    for parent, child in _walk(space, init, 4000, seed=1):
        for pos, (a, b) in enumerate(zip(parent, child, strict=True)):
            if a != b:
                changed[pos] += 1
    assert set(changed) == set(range(len(space.encode(init))))  # stem out and all 4 fields of all 5 stages


# docs/design.md §4: channels are multiplied by one of these, rounded to a multiple of 8, then clipped to the
# legal interval.
DESIGN_CHANNEL_RATIOS = (1.5, 1.25, 0.8, 0.6, 0.5)


def _channel_interval(space, parent, child, pos):
    """The legal [low, high] of the mutated channel field: a block's out (between its neighbours) or its btn."""
    if pos == 0 or (pos - 1) % 4 == 0:
        return space._out_interval(parent, 0 if pos == 0 else (pos - 1) // 4 + 1)
    out = child[pos - 3]
    return space._btn_low(out), out


def test_channel_mutations_use_exactly_the_design_ratios(space, init):
    used = set()
    for parent, child in _walk(space, init, 3000, seed=2):
        pos = next(i for i, (a, b) in enumerate(zip(parent, child, strict=True)) if a != b)
        if pos != 0 and (pos - 1) % 4 in (1, 2):  # k or L
            continue
        low, high = _channel_interval(space, parent, child, pos)
        proposals = {r: round8(parent[pos] * r) for r in DESIGN_CHANNEL_RATIOS}
        assert child[pos] in {min(max(v, low), high) for v in proposals.values()}, (parent, child)
        used |= {r for r, v in proposals.items() if v == child[pos]}
    assert used == set(DESIGN_CHANNEL_RATIOS)


def test_mutation_steps_follow_the_design(space, init):
    for parent, child in _walk(space, init, 3000, seed=2):
        diff = [i for i, (a, b) in enumerate(zip(parent, child, strict=True)) if a != b]
        pos = diff[0]
        field = "out" if pos == 0 else ("out", "k", "L", "btn")[(pos - 1) % 4]
        new = child[pos]
        if field in ("out", "btn"):
            assert new % 8 == 0 and 8 <= new <= 2048
        elif field == "k":
            assert {parent[pos], new} == {3, 5}
        elif field == "L":
            clipped = new == 1 or (pos == 3 and new == 3)  # at least 1; the first stage at most 3
            assert new >= 1 and (abs(new - parent[pos]) in (1, 2) or clipped)
            if pos == 3:
                assert new <= 3


def test_kernel_never_exceeds_the_feature_size_rule(init):
    small = SearchSpace.from_structure(init, 160)  # last stage input 160/16 = 10 px → k ≤ 5; 160/32 → none
    assert small.max_kernels == (5, 5, 5, 5, 5)
    tiny = SearchSpace.from_structure(init, 96)  # inputs 48, 24, 12, 6, 6 px → k·1.5 ≤ 6 allows only 3
    assert tiny.max_kernels == (5, 5, 5, 3, 3)
    for parent, child in _walk(tiny, init, 2000, seed=3):
        for j in range(tiny.num_stages):
            if child[2 + 4 * j] != parent[2 + 4 * j]:
                assert child[2 + 4 * j] <= tiny.max_kernels[j]


def test_budget_check_matches_zoo_costs(space, init):
    evaluator = GenomeEvaluator(space, (0, 0, 1, 1, 6))
    budget = Budget(flops=12_000_000_000, params=30_000_000, layers=40, gmacs=3.0)
    verdicts = set()
    for _, genome in _walk(space, init, 1500, seed=4)[::5]:
        structure = space.decode(genome)
        admitted = budget.admits(evaluator, genome)
        assert admitted == (budget.violations(structure) == [])
        verdicts.add(admitted)
    assert verdicts == {True, False}


def test_presets_use_published_flops_and_layers():
    assert preset_budget("maedet-s") == Budget(flops=10_992_870_000, layers=79, resolution=480)
    assert preset_budget("maedet-m") == Budget(flops=20_299_923_000, layers=91, resolution=480)
    assert preset_budget("maedet-l") == Budget(flops=34_494_619_500, layers=109, resolution=480)
    with pytest.raises(ValueError, match="unknown preset"):
        preset_budget("maedet-xl")
    with pytest.raises(ValueError, match="impossible budget"):
        Budget(flops=-1)
