"""The authors' V100 tables: predictions against the authors' method computed independently here.

The reference below is a plain re-statement of docs/latency_v100.md ("How a prediction is made"): the raw table
lines parsed with Python string methods, the 2-D sets fed to scipy in file order, and the 1-D steps (across
ratios, across batches) written out as straight-line formulas instead of scipy's ``interp1d``. Exact table hits
and grid-edge interpolations are checked against the table rows themselves.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

import maedet.zoo.latency.v100 as v100
from maedet.errors import MaeDetError
from maedet.zoo import Stage, Structure, load_structure

DATA = Path(v100.__file__).with_name("data") / "v100"
DOC = Path(__file__).parents[1] / "docs" / "latency_v100.md"
PUBLISHED = ("maedet_s", "maedet_m", "maedet_l", "r50_like_init")


def read_raw(file_name: str) -> list[tuple]:
    """(type, batch, in_c, in_h, out_c, kernel, stride, fused, ms) per line, parsed with plain Python."""
    rows = []
    with gzip.open(DATA / file_name, "rt") as f:
        for line in f:
            key, ms = line.split()
            kind, batch, in_c, in_h, _in_w, out_c, kernel, stride, fused = key.strip("{}").split(",")
            rows.append((kind, int(batch), int(in_c), int(in_h), int(out_c), int(kernel), int(stride), int(fused)))
            rows[-1] += (float(ms),)
    return rows


def line_through(xs: list[float], ys: list[float], x: float) -> float:
    """Linear interpolation in the segment around x; the end segments extended beyond the ends."""
    pairs = sorted(zip(xs, ys, strict=True))
    i = 1
    while i < len(pairs) - 1 and x > pairs[i][0]:
        i += 1
    (x0, y0), (x1, y1) = pairs[i - 1], pairs[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class ReferencePredictor:
    """The authors' per-conv method, written out plainly from the docs, for cross-checking the module."""

    def __init__(self, rows: list[tuple]) -> None:
        self.sets: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
        self.batches: dict[tuple, set[int]] = defaultdict(set)
        for kind, batch, in_c, in_h, out_c, kernel, stride, fused, ms in rows:
            if kind != "Regular" or in_h == 4 or ms < 0:
                continue
            ratio = 0.0 if in_c == 3 else int(in_c / out_c * 100) / 100
            points, values = self.sets[(stride, fused, kernel, batch, ratio)]
            points.append((out_c, in_h))
            values.append(ms)
            self.batches[(stride, fused, kernel)].add(batch)
        self._interpolators: dict[tuple, tuple] = {}

    def in_set(self, group: tuple, out_c: int, in_h: int) -> float:
        if group not in self._interpolators:
            points, values = self.sets[group]
            linear = LinearNDInterpolator(points, values)
            with v100._one_blas_thread():  # thread count only: scipy's first call is slow with many BLAS threads
                linear(out_c, in_h)
            self._interpolators[group] = (linear, NearestNDInterpolator(points, values, rescale=True))
        linear, nearest = self._interpolators[group]
        value = float(linear(out_c, in_h))
        return value if value >= 0 else float(nearest(out_c, in_h))  # NaN >= 0 is False too

    def at_batch(self, key: tuple, batch: int, in_c: int, in_h: int, out_c: int) -> float:
        if in_c == 3:
            return self.in_set((*key, batch, 0.0), out_c, in_h)
        ratio = in_c / out_c
        ratios = sorted(g[4] for g in self.sets if g[:4] == (*key, batch) and g[4] != 0.0)
        if ratio in ratios:
            return self.in_set((*key, batch, ratio), out_c, in_h)
        kept_r: list[float] = []
        kept_v: list[float] = []
        for r in ratios:
            value = self.in_set((*key, batch, r), out_c, in_h)
            if len(kept_r) < 2 or value > kept_v[-1]:
                kept_r.append(r)
                kept_v.append(value)
        value = line_through(kept_r, kept_v, ratio)
        return value if value >= 0 else ratio / kept_r[0] * kept_v[0]

    def conv_ms(self, conv: tuple, batch: int) -> float:
        _, stride, fused, kernel, in_c, in_h, out_c = conv
        key = (stride, fused, kernel)
        if key not in self.batches:
            return math.inf
        if batch in self.batches[key]:
            value = self.at_batch(key, batch, in_c, in_h, out_c)
        else:
            batches = sorted(self.batches[key])
            values = [self.at_batch(key, b, in_c, in_h, out_c) for b in batches]
            value = line_through(batches, values, batch)
        return value if value >= 0 else math.inf

    def seconds_per_image(self, structure: Structure, batch: int, input_size: int) -> float:
        total = sum(self.conv_ms(c, batch) for c in reference_conv_list(structure, input_size))
        return total / batch / 1000


def reference_conv_list(structure: Structure, size: int) -> list[tuple]:
    """The authors' conv list per the docs, written independently of the module."""
    stem = structure.stem
    convs = [("Regular", stem.stride, 0, stem.kernel_size, stem.in_chs, size, stem.out_chs)]
    size //= stem.stride
    for st in structure.stages:
        convs += [
            ("Regular", 1, 0, 1, st.in_chs, size, st.bottleneck_chs),
            ("Regular", st.stride, 0, st.kernel_size, st.bottleneck_chs, size, st.bottleneck_chs),
            ("Regular", 1, 1, 1, st.bottleneck_chs, size // st.stride, st.out_chs),
            ("Regular", 1, 0, 1, st.in_chs, size // st.stride, st.out_chs),  # the projection
        ]
        size //= st.stride
        convs += [
            ("Regular", 1, 0, 1, st.out_chs, size, st.bottleneck_chs),
            ("Regular", 1, 0, st.kernel_size, st.bottleneck_chs, size, st.bottleneck_chs),
            ("Regular", 1, 1, 1, st.bottleneck_chs, size, st.out_chs),
        ] * (st.depth - 1)
    return convs


@pytest.fixture(scope="module")
def fp16_rows() -> list[tuple]:
    return read_raw("conv_data.out.fp16.gz")


@pytest.fixture(scope="module")
def fp16_reference(fp16_rows) -> ReferencePredictor:
    return ReferencePredictor(fp16_rows)


def table_ms(rows: list[tuple], kind, batch, in_c, in_h, out_c, kernel, stride, fused) -> float:
    matches = [r[8] for r in rows if r[:8] == (kind, batch, in_c, in_h, out_c, kernel, stride, fused)]
    assert len(matches) == 1, "the test needs exactly one table row for this key"
    return matches[0]


# ---------------------------------------------------------------------------------------------- the files
def test_shipped_files_have_the_row_counts_the_docs_state():
    doc = DOC.read_text()
    for name, file_name in (("FP32", "conv_data.out.gz"), ("FP16", "conv_data.out.fp16.gz")):
        stated = re.search(rf"\| `{re.escape(file_name)}` \| {name} \| ([\d,]+) \|", doc)
        assert stated, f"docs/latency_v100.md lists {file_name}"
        with gzip.open(DATA / file_name, "rt") as f:
            assert sum(1 for _ in f) == int(stated.group(1).replace(",", ""))


# ---------------------------------------------------------------------------------------------- conv list
def test_conv_list_is_the_authors_layout():
    structure = load_structure("maedet_s")
    convs = v100.conv_list(structure, 480)
    assert convs == reference_conv_list(structure, 480)
    blocks = sum(s.depth for s in structure.stages)
    assert len(convs) == 1 + 3 * blocks + len(structure.stages)  # stem, 3 per block, one projection per stage
    # first stage (32 -> 48, k5, btn 32, stride 2) at 240 px: reduce, strided k×k, fused expand, projection
    assert convs[:5] == [
        ("Regular", 2, 0, 3, 3, 480, 32),
        ("Regular", 1, 0, 1, 32, 240, 32),
        ("Regular", 2, 0, 5, 32, 240, 32),
        ("Regular", 1, 1, 1, 32, 120, 48),
        ("Regular", 1, 0, 1, 32, 120, 48),
    ]
    assert v100.load_v100_table("v100-fp16", 32, 480).conv_list(structure) == convs


def test_sizes_shrink_by_integer_division():
    structure = load_structure("r50_like_init")
    sizes = [c[5] for c in v100.conv_list(structure, 225) if c[1] == 2]  # inputs of the strided convs
    assert sizes == [225, 112, 56, 28, 14]  # a real 3×3 stride-2 conv on 225 px gives 113, not 112


# ---------------------------------------------------------------------------------------------- per conv
@pytest.mark.parametrize(
    "key",
    [
        ("Regular", 32, 3, 480, 32, 3, 2, 0),  # MAE-DET-S's stem at 480: the ratio-0 set
        ("Regular", 32, 32, 214, 32, 5, 2, 0),  # ratio 1
        ("Regular", 32, 64, 56, 256, 1, 1, 1),  # ratio 0.25, fused
        ("Regular", 1, 1024, 26, 512, 3, 1, 0),  # ratio 2, batch 1
        ("Regular", 128, 2048, 12, 512, 1, 1, 1),  # ratio 4, batch 128
    ],
)
def test_an_exact_table_hit_returns_the_table_value(fp16_rows, key):
    kind, batch, in_c, in_h, out_c, kernel, stride, fused = key
    predictor = v100.load_v100_table("v100-fp16", batch, 480)
    expected = table_ms(fp16_rows, *key)
    assert predictor.predict_conv_ms((kind, stride, fused, kernel, in_c, in_h, out_c)) == pytest.approx(expected)


def test_between_two_profiled_sizes_the_prediction_is_linear_along_the_grid_line(fp16_rows):
    # MAE-DET-S's first reduce conv: 32 -> 32 at 240 px, between the profiled 214 and 280 px.
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    low = table_ms(fp16_rows, "Regular", 32, 32, 214, 32, 1, 1, 0)
    high = table_ms(fp16_rows, "Regular", 32, 32, 280, 32, 1, 1, 0)
    expected = low + (high - low) * (240 - 214) / (280 - 214)
    assert predictor.predict_conv_ms(("Regular", 1, 0, 1, 32, 240, 32)) == pytest.approx(expected, rel=1e-12)


def test_sizes_beyond_the_table_take_the_nearest_profiled_point(fp16_rows):
    predictor = v100.load_v100_table("v100-fp16", 32, 640)
    stem_640 = predictor.conv_list(load_structure("maedet_s"))[0]
    assert stem_640 == ("Regular", 2, 0, 3, 3, 640, 32)
    assert predictor.predict_conv_ms(stem_640) == table_ms(fp16_rows, "Regular", 32, 3, 480, 32, 3, 2, 0)


def test_off_grid_ratios_follow_the_authors_rule(fp16_reference):
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    convs = [
        ("Regular", 1, 0, 1, 48, 120, 120),  # ratio 0.4
        ("Regular", 1, 0, 1, 272, 60, 80),  # ratio 3.4
        ("Regular", 1, 0, 3, 448, 240, 160),  # ratio 2.8, where "keep only increasing" drops two ratio sets
        ("Regular", 1, 1, 1, 120, 60, 2048),  # ratio 0.06: extrapolated below the smallest ratio
    ]
    for conv in convs:
        assert predictor.predict_conv_ms(conv) == pytest.approx(fp16_reference.conv_ms(conv, 32), rel=1e-12)


def test_the_ratio_rule_can_make_a_larger_input_predict_faster(fp16_reference):
    # Documented quirk: at 240 px two ratio sets are dropped, at 120 px one; 4x the pixels, less time.
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    small, large = ("Regular", 1, 0, 3, 448, 120, 160), ("Regular", 1, 0, 3, 448, 240, 160)
    assert predictor.predict_conv_ms(small) > predictor.predict_conv_ms(large)
    assert fp16_reference.conv_ms(small, 32) > fp16_reference.conv_ms(large, 32)


# ---------------------------------------------------------------------------------------------- batch
def test_batches_between_the_profiled_ones_interpolate_linearly():
    conv = ("Regular", 1, 0, 1, 48, 120, 120)
    at = {b: v100.load_v100_table("v100-fp16", b, 480).predict_conv_ms(conv) for b in (1, 16, 32, 64, 128, 200)}
    assert at[16] == pytest.approx(at[1] + (at[32] - at[1]) * (16 - 1) / (32 - 1), rel=1e-12)
    assert at[200] == pytest.approx(at[64] + (at[128] - at[64]) * (200 - 64) / (128 - 64), rel=1e-12)


def test_a_structure_at_an_unprofiled_batch_matches_the_reference(fp16_reference):
    structure = load_structure("maedet_s")
    predictor = v100.load_v100_table("v100-fp16", 16, 480)
    expected = fp16_reference.seconds_per_image(structure, 16, 480)
    assert predictor.predict_ms_per_image(structure) / 1000 == pytest.approx(expected, rel=1e-12)


def test_a_negative_batch_extrapolation_makes_the_network_infinite():
    # FP32, batch 256: this strided conv's values fall from batch 64 to 128, so the line crosses zero.
    conv = ("Regular", 2, 0, 3, 120, 240, 120)
    at = {b: v100.load_v100_table("v100-fp32", b, 480).predict_conv_ms(conv) for b in (64, 128, 256)}
    assert at[64] + (at[128] - at[64]) * (256 - 64) / (128 - 64) < 0
    assert at[256] == math.inf
    stage = Stage(32, 120, 2, 3, 1, 120)
    structure = Structure(load_structure("maedet_s").stem, (stage,))
    assert v100.load_v100_table("v100-fp32", 256, 480).predict_ms(structure) == math.inf


# ---------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("name", PUBLISHED)
def test_published_structures_match_the_reference_at_the_authors_search_setting(fp16_reference, name):
    # configs/detection/R50_FLOPs_predictor.py: FP16, batch 32, 480 px (budget 8e-4 s per image).
    structure = load_structure(name)
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    got = predictor.predict_ms_per_image(structure) / 1000
    assert got == pytest.approx(fp16_reference.seconds_per_image(structure, 32, 480), rel=1e-12)
    assert got == predictor.predict_ms(structure) / 32 / 1000
    assert 0 < got < 0.01


@pytest.mark.slow
def test_published_structures_match_the_reference_in_fp32_and_int8():
    settings = (("v100-fp32", "conv_data.out.gz", 1, 224), ("v100-int8", "conv_data.out.int8.gz", 64, 640))
    for table, file_name, batch, size in settings:
        reference = ReferencePredictor(read_raw(file_name))
        predictor = v100.load_v100_table(table, batch, size)
        for name in ("maedet_s", "maedet_l"):
            structure = load_structure(name)
            expected = reference.seconds_per_image(structure, batch, size)
            assert predictor.predict_ms_per_image(structure) / 1000 == pytest.approx(expected, rel=1e-12)


def test_int8_predicts_slower_than_fp16_on_every_published_structure():
    # Documented quirk: Volta has no INT8 tensor cores, and the authors' INT8 table shows it.
    fp16 = v100.load_v100_table("v100-fp16", 32, 480)
    int8 = v100.load_v100_table("v100-int8", 32, 480)
    for name in PUBLISHED:
        structure = load_structure(name)
        assert int8.predict_ms(structure) > fp16.predict_ms(structure)


def test_a_kernel_the_table_lacks_makes_the_network_infinite():
    blocks = load_structure("maedet_s").to_authors()
    blocks[2] = dict(blocks[2], k=9)
    structure = Structure.from_blocks(blocks)
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    assert predictor.predict_conv_ms(("Regular", 1, 0, 9, 120, 60, 120)) == math.inf
    assert predictor.predict_ms(structure) == math.inf
    assert predictor.predict_ms_per_image(structure) / 1000 == math.inf


def test_repeated_predictions_are_identical_and_accept_structure_dicts():
    predictor = v100.load_v100_table("v100-int8", 1, 320)
    structure = load_structure("maedet_m")
    first = predictor.predict_ms(structure)
    assert predictor.predict_ms(structure) == first
    assert predictor.predict_ms(structure.to_dict()) == first
    assert v100.load_v100_table("v100-int8", 1, 320).predict_ms(structure) == first


# ---------------------------------------------------------------------------------------------- the target
def test_target_and_label_say_predicted_from_the_authors_table():
    predictor = v100.load_v100_table("v100-fp16", 32, 480)
    assert predictor.label == "predicted (authors' V100 table)"
    assert predictor.target == {
        "name": "v100-fp16",
        "device": "NVIDIA V100 (authors' TensorRT measurements)",
        "precision": "fp16",
        "batch": 32,
        "input_size": 480,
        "source": predictor.target["source"],
    }
    assert "8ccaf889fcd0" in predictor.target["source"]
    assert "conv_data.out.fp16" in predictor.target["source"]
    assert v100.V100_TABLES == ("v100-fp32", "v100-fp16", "v100-int8")


def one_sentence(message: str) -> bool:
    return message[0].islower() and message.endswith(".") and "\n" not in message and ". " not in message


def test_an_unknown_table_name_is_one_sentence():
    with pytest.raises(MaeDetError) as caught:
        v100.load_v100_table("v100-fp64", 32, 480)
    assert one_sentence(str(caught.value))
    assert "'v100-fp64'" in str(caught.value) and "v100-fp16" in str(caught.value)


@pytest.mark.parametrize(
    ("batch", "input_size"),
    [(0, 480), (-1, 480), (1.5, 480), (True, 480), ("32", 480), (32, 0), (32, 480.0), (32, None)],
)
def test_a_bad_batch_or_input_size_is_one_sentence(batch, input_size):
    with pytest.raises(MaeDetError) as caught:
        v100.load_v100_table("v100-fp16", batch, input_size)
    assert one_sentence(str(caught.value))
