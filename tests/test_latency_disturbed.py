"""Networks measured while the machine was disturbed (their anchor ran far over its quiet time) are measured again
after the others, and the quieter measurement is kept."""

from __future__ import annotations

import pytest

from maedet.bench.profile import ProfileSettings, sample_structures
from maedet.bench.profile_measure import Measurer, Timing
from maedet.bench.profile_state import MeasuredUnits
from maedet.bench.profile_validate import DISTURBED_ANCHOR, MIN_UNITS_FOR_QUIET, disturbed_units, measure_units


def quiet_units(count: int, anchor_ms: float = 10.0) -> dict[str, Timing]:
    return {f"q{i}": Timing([50.0] * 3, [anchor_ms] * 3) for i in range(count)}


def test_disturbed_units_are_those_whose_anchor_median_ran_over_the_quiet_time():
    """Ten units whose anchor took 10 ms in every round: the quiet time (the 25th percentile of all anchor rounds)
    is 10 ms; a unit whose anchor's median is 13 ms (1.3×) is disturbed, one at 11.5 ms (1.15×) and one slowed in
    a single round of three are not."""
    units = quiet_units(10) | {
        "slow": Timing([60.0] * 3, [13.0, 12.5, 14.0]),
        "mild": Timing([55.0] * 3, [11.5] * 3),
        "one_round": Timing([50.0] * 3, [10.0, 30.0, 10.0]),
    }
    assert DISTURBED_ANCHOR == 1.2
    assert disturbed_units(units) == ["slow"]
    assert disturbed_units(units, ratio=1.1) == ["slow", "mild"]
    few = dict(list(units.items())[-MIN_UNITS_FOR_QUIET + 1 :])
    assert disturbed_units(few) == []  # too few units to know what quiet is


@pytest.mark.slow
def test_a_disturbed_network_is_measured_again_and_the_quieter_measurement_kept(tmp_path):
    """Eight quiet units and two disturbed ones already in the state: the first disturbed one (anchor 10⁶ ms) is
    measured again for real and replaced; the second (anchor 0.013 ms, 1.3× the quiet 0.01 ms — quieter than any
    real run) is measured again and kept, since the new measurement is not quieter; the quiet ones are left."""
    settings = ProfileSettings(input_size=64, rounds=2, threads=1)
    nets = sample_structures(10, 4, 64)
    units = {f"n{i}": s for i, s in enumerate(nets)}
    state = MeasuredUnits(tmp_path / "v.json", {"test": 1}, "test-partial/1")
    for i in range(8):
        state.units[f"n{i}"] = Timing([1.0, 1.0], [0.01, 0.01])
    state.units["n8"] = Timing([5.0, 5.0], [1e6, 1e6])
    state.units["n9"] = Timing([5.0, 5.0], [0.013, 0.013])
    labels: list[tuple[int, str]] = []
    measure_units(units, state, Measurer(settings, str(tmp_path)), lambda n, label: labels.append((n, label)), str)

    replaced = state.units["n8"]
    assert len(replaced.anchor) == 2 and 0 < max(replaced.anchor) < 1e3 and replaced.times != [5.0, 5.0]
    assert state.units["n9"].anchor == [0.013, 0.013]
    assert all(state.units[f"n{i}"].anchor == [0.01, 0.01] for i in range(8))
    assert [label for n, label in labels if n == 0] == [
        "n8 network n8 again (its first measurement was disturbed)",
        "n9 network n9 again (its first measurement was disturbed)",
    ]
    assert MeasuredUnits(tmp_path / "v.json", {"test": 1}, "test-partial/1").units["n8"] == replaced  # saved
