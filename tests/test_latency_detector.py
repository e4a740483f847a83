"""Whole-detector latency: the FPN + GFocalV2 head + postprocess priced from a table, detector budgets in the
search, score JSON, old tables refused in one sentence, and a tiny real detector profile."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from maedet.bench.profile_detector import attribute_detector_node
from maedet.search import SearchSpace
from maedet.search.cli import main
from maedet.search.detector_latency import DetectorLatencyTarget, detector_target
from maedet.search.latency import LatencyTarget
from maedet.zoo import Structure, builtin_structure
from maedet.zoo.latency import LatencyTable
from maedet.zoo.latency.detector import DETECTOR_ROLES, detector_widths

CONV = [1.0e-8, 2.0e-8, 1.5e-8, 1.0e-8, 0.02]
# ms per feature unit of the new roles: GroupNorm + ReLU, upsample + add, head arithmetic, postprocess
GN, UPADD, MISC, POST = (
    [0, 3e-7, 1e-7, 0, 0.01],
    [0, 2e-7, 2e-7, 0, 0.005],
    [0, 1e-7, 4e-7, 0, 0.03],
    [1e-9, 0, 0, 0, 2],
)
DETECTOR_SCALE, SIZE, BATCH, BLOCK = 1.25, 320, 1, 16


def synthetic_table(with_detector: bool = True) -> LatencyTable:
    """A profiled table with hand-chosen coefficients; its detector section prices FPN 256, 4 stacked convs."""
    roles = {r: CONV for r in ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool")}
    table = LatencyTable(
        target={"backend": "ort-cpu", "precision": "fp32", "batch": BATCH, "input_size": SIZE, "threads": 1},
        model={"channel_block": BLOCK, "roles": roles},
        calibration={"scale": 1.1, "per_conv_ms": 0.01, "offset_ms": 0.3},
    )
    m = table.predict_ms(builtin_structure("maedet_m"))
    table.references = {"resnet50": 0.9 * m, "maedet_m": 1.1 * m}
    table.validation = {"count": 30, "rmspe_pct": 4.0, "within_10pct": 0.95, "spearman_rho": 0.99}  # no warning
    if with_detector:
        table.detector = {
            "head": {"fpn_channels": 256, "stacked_convs": 4},
            "roles": {"gn": GN, "upadd": UPADD, "headmisc": MISC, "post": POST},
            "calibration": {"scale": DETECTOR_SCALE, "offset_ms": 0.0},
            "references": {"resnet50_gfl": 3.0 * m, "maedet_m_gfl": 2.8 * m},
        }
    return table


def _up(c: int) -> int:
    return -(-c // BLOCK) * BLOCK


def _conv_ms(c_in: int, c_out: int, k: int, stride: int, size: int) -> float:
    out = -(-size // stride)
    ci, co = _up(c_in), _up(c_out)
    features = [out * out * ci * co * k * k, size * size * ci, out * out * co, ci * co * k * k, 1]
    return float(np.dot(features, CONV))


def _elementwise_ms(coefs: list[float], c_in: int, c_out: int, size: int, reads: int = 1) -> float:
    p = size * size
    return float(np.dot([0, reads * p * _up(c_in), p * _up(c_out), 0, 1], coefs))


def neck_head_by_hand(c3: int, c4: int, c5: int) -> float:
    """The FPN and head of zoo/gfl.py at SIZE, written out operator by operator from the module's code."""
    f, sizes = 256, [40, 20, 10, 5, 3]  # 320 px: strides 8..128, sides rounded up
    ms = sum(_conv_ms(c, f, 1, 1, s) for c, s in zip((c3, c4, c5), sizes[:3], strict=True))  # laterals
    ms += _elementwise_ms(UPADD, f, f, 20, reads=2) + _elementwise_ms(UPADD, f, f, 40, reads=2)
    ms += sum(_conv_ms(f, f, 3, 1, s) for s in sizes[:3]) + _conv_ms(f, f, 3, 2, 10) + _conv_ms(f, f, 3, 2, 5)
    for s in sizes:
        ms += 8 * (_conv_ms(f, f, 3, 1, s) + _elementwise_ms(GN, f, f, s))  # 2 towers × 4 stacked convs
        ms += _conv_ms(f, 81, 3, 1, s) + _conv_ms(f, 68, 3, 1, s)  # cls_out, reg_out (4 × 17 bins)
        ms += _conv_ms(20, 64, 1, 1, s) + _conv_ms(64, 1, 1, 1, s)  # the quality MLP
        ms += _elementwise_ms(MISC, 68, 81, s)
    return DETECTOR_SCALE * ms


def post_by_hand() -> float:
    points = [40 * 40, 20 * 20, 10 * 10, 5 * 5, 3 * 3]
    candidates = sum(min(p, 1000) for p in points)
    return candidates**2 * POST[0] + POST[4]


def widths_by_hand(structure: Structure) -> tuple[int, ...]:
    """The out width of the last block before each of reductions 16, 32 and of the final block (C3, C4, C5)."""
    reduction, last = structure.stem.stride, {}
    for stage in structure.stages:
        reduction *= stage.stride
        last[reduction] = stage.out_chs
    return last[8], last[16], last[32]


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    return synthetic_table().save(tmp_path_factory.mktemp("det") / "cpu320.json")


def test_the_neck_and_head_are_the_sum_over_their_operators():
    structure = builtin_structure("maedet_m")
    c3, c4, c5 = detector_widths(structure)
    assert (c3, c4, c5) == widths_by_hand(structure)
    parts = synthetic_table().detector_latency().predict(structure)
    assert parts["neck_head_ms"] == pytest.approx(neck_head_by_hand(c3, c4, c5), rel=1e-12)
    assert parts["postprocess_ms"] == pytest.approx(post_by_hand(), rel=1e-12)
    assert parts["backbone_ms"] == pytest.approx(synthetic_table().predict_ms(structure), rel=1e-12)
    assert parts["total_ms"] == pytest.approx(parts["backbone_ms"] + parts["neck_head_ms"] + parts["postprocess_ms"])


def test_genome_prices_match_the_decoded_detector():
    target = detector_target(LatencyTarget.of(synthetic_table()), "synthetic")
    space = SearchSpace.from_structure(builtin_structure("r50_like_init"), 480)
    latency = target.genome_latency(space)
    rng = random.Random(3)
    genome = space.encode(builtin_structure("r50_like_init"))
    for _ in range(30):
        genome = space.mutate(genome, rng) or genome
        assert latency(genome) == pytest.approx(target.predict_ms(space.decode(genome)), rel=1e-12)


def test_a_detector_budget_search_fits_the_whole_detector(table_file, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--latency-table", str(table_file), "--budget-latency", "1.0xresnet50_gfl", "--detector-budget"]
    assert main([*args, "--budget-layers", "91", "--iterations", "300", "--population", "32", "--quiet",
                 "--out", str(out)]) == 0  # fmt: skip
    table = LatencyTable.load(table_file)
    best = json.loads((out / "best.json").read_text())
    # priced as the candidates are: ResNet-50's measured backbone + this table's neck, head and postprocess at its
    # widths (not the measured detector, whose neck-and-head error the candidates' prices would not share)
    post = table.detector_latency().post_ms()
    priced = table.references["resnet50"] + neck_head_by_hand(512, 1024, 2048) + post
    assert best["budget"]["latency_ms"] == pytest.approx(priced, rel=1e-12)
    assert priced != pytest.approx(table.detector["references"]["resnet50_gfl"], rel=1e-3)
    structure = Structure.from_dict(best["structure"])
    parts = best["detector_latency"]
    assert parts["total_ms"] == best["latency_ms"] <= best["budget"]["latency_ms"]
    assert parts["neck_head_ms"] == pytest.approx(neck_head_by_hand(*detector_widths(structure)), rel=1e-12)
    assert parts["backbone_ms"] == pytest.approx(table.predict_ms(structure), rel=1e-12)
    assert parts["backbone_ms"] < best["budget"]["latency_ms"] - parts["neck_head_ms"] - parts["postprocess_ms"] + 1e-9
    assert best["latency_label"].startswith("end-to-end detector")
    population = json.loads((out / "population.json").read_text())
    assert all(member["latency_ms"] <= best["budget"]["latency_ms"] for member in population)


def test_a_detector_budget_binds_harder_than_the_backbone_budget(table_file, tmp_path):
    common = ["--latency-table", str(table_file), "--budget-latency", "215", "--budget-layers", "91"]
    common += ["--iterations", "300", "--population", "32", "--quiet"]
    assert main(["run", *common, "--out", str(tmp_path / "b")]) == 0
    assert main(["run", *common, "--detector-budget", "--out", str(tmp_path / "d")]) == 0
    backbone = json.loads((tmp_path / "b" / "best.json").read_text())
    detector = json.loads((tmp_path / "d" / "best.json").read_text())
    assert detector["detector_latency"]["backbone_ms"] < backbone["latency_ms"] <= 215
    assert detector["latency_ms"] <= 215 < detector["latency_ms"] - detector["detector_latency"]["backbone_ms"] + 60
    assert detector["score"] < backbone["score"]


def test_score_json_gives_backbone_neck_head_and_total(table_file, capsys):
    assert main(["score", "maedet_s", "--latency-table", str(table_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    structure = builtin_structure("maedet_s")
    parts = info["detector_latency"]
    assert info["latency_ms"] == pytest.approx(synthetic_table().predict_ms(structure), rel=1e-12)
    assert parts["backbone_ms"] == pytest.approx(info["latency_ms"], rel=1e-12)
    assert parts["neck_head_ms"] == pytest.approx(neck_head_by_hand(*detector_widths(structure)), rel=1e-12)
    assert parts["total_ms"] == pytest.approx(parts["backbone_ms"] + parts["neck_head_ms"] + post_by_hand())


def test_tables_without_a_detector_are_refused_in_one_sentence(tmp_path, capsys):
    old = synthetic_table(with_detector=False).save(tmp_path / "old.json")
    assert "detector" not in json.loads(old.read_text())  # older tables load and write unchanged
    argv = ["run", "--latency-table", str(old), "--budget-latency", "30", "--detector-budget", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no detector section" in err and "maedet-bench profile --detector" in err
    v100 = ["--latency-table", "v100-fp16", "--latency-batch", "32", "--input-size", "480"]
    assert main(["run", *v100, "--budget-latency", "30", "--detector-budget", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "predicts backbones only" in err
    assert main(["score", "maedet_s", "--latency-table", str(old), "--json"]) == 0
    assert "detector_latency" not in json.loads(capsys.readouterr().out)


def test_detector_budget_errors_are_one_sentence(table_file, tmp_path, capsys):
    cases = [
        (["--budget-layers", "91", "--detector-budget"], "--detector-budget goes with --budget-latency"),
        (["--budget-latency", "1.0xresnet50_gfl"], "needs --detector-budget"),
        (["--budget-latency", "1.0xresnet50", "--detector-budget"], "has no reference 'resnet50'"),
    ]
    for extra, message in cases:
        assert main(["run", "--latency-table", str(table_file), *extra, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_a_malformed_detector_section_is_one_sentence():
    from maedet.errors import MaeDetError

    data = synthetic_table().to_dict()
    for bad in ({"roles": {"softmax": CONV}}, {"roles": {"gn": [1, 2]}}, {"roles": {"gn": GN}, "head": {"x": 1}}):
        with pytest.raises(MaeDetError, match="detector"):
            LatencyTable.from_dict({**data, "detector": bad})


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ({"levels": 10**7}, "levels 10000000 (at most 8)"),
        ({"stacked_convs": 10**9}, "stacked_convs 1000000000 (at most 16)"),
        ({"fpn_channels": 2**40, "reg_channels": 2**40}, "fpn_channels 1099511627776 (at most 4096), reg_channels"),
        ({"reg_max": 2, "reg_topk": 4}, "picks reg_topk 4 of only reg_max + 1 = 3"),
    ],
)
def test_a_shared_tables_oversized_head_is_one_sentence_before_any_walk(head, message, tmp_path, capsys):
    """A table is shared data: a head of ten million levels walked the pyramid until the process was killed."""
    data = synthetic_table().to_dict()
    data["detector"]["head"] |= head
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    assert main(["score", "maedet_s", "--latency-table", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "larger than any GFocalV2" in captured.err or "distribution bins" in captured.err
    assert message in captured.err


def test_a_resumed_search_must_price_the_same_detector(table_file, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--latency-table", str(table_file), "--budget-latency", "250", "--budget-layers", "91"]
    common += ["--iterations", "100", "--quiet", "--out", str(out)]
    assert main(["run", *common]) == 0
    assert main(["run", *common, "--detector-budget", "--resume"]) == 2
    assert "latency_table" in capsys.readouterr().err
    assert isinstance(detector_target(LatencyTarget.of(synthetic_table()), "t"), DetectorLatencyTarget)


@pytest.mark.parametrize(
    ("node", "part"),
    [
        ("/detector/backbone/stages_0/blocks/blocks.0/conv1/conv/Conv", "backbone"),
        ("/detector/neck/lateral_convs.0/Conv", "det.conv"),
        ("/detector/neck/Resize_1", "det.upadd"),
        ("/detector/neck/Add", "det.upadd"),
        ("/detector/head/reg_tower/reg_tower.0/norm_1/InstanceNormalization", "det.gn"),
        ("/detector/head/cls_tower/cls_tower.3/act_2/Relu", "det.gn"),
        ("/detector/head/cls_tower/cls_tower.3/conv_2/Conv", "det.conv"),
        ("/detector/head/quality/fc1/Conv", "det.conv"),
        ("/detector/head/quality/TopK", "det.misc"),
        ("/detector/head/Softmax", "det.misc"),
        ("postprocess//NonMaxSuppression", "det.post"),
        ("ReorderOutput_token_7", None),
    ],
)
def test_detector_nodes_are_attributed_to_their_part(node, part):
    assert attribute_detector_node(node) == part


def test_the_detector_roles_are_the_ones_the_profile_fits():
    assert set(synthetic_table().detector["roles"]) == set(DETECTOR_ROLES)


@pytest.mark.slow
def test_a_tiny_real_detector_profile_predicts_and_validates(tmp_path):
    from maedet.bench.profile import ProfileSettings, profile_target
    from maedet.bench.profile_detector import profile_detector, validate_detectors

    path = tmp_path / "tiny.json"
    tiny = ProfileSettings(input_size=64, train_nets=2, calibration_nets=2, validation_nets=1, rounds=1, threads=1)
    profile_target(path, tiny, progress=False)
    table = profile_detector(path, train=2, held_out=1, rounds=1, progress=False)
    section = LatencyTable.load(path).detector
    assert section == json.loads(json.dumps(table.detector))
    assert any(c > 0 for c in section["roles"]["gn"]) and any(c > 0 for c in section["roles"]["post"])
    assert section["references"]["resnet101_gfl"] > section["references"]["resnet50_gfl"] > 0
    assert section["validation"]["count"] == 1 + 3  # the held-out detector and MAE-DET-S/M/L GFL
    parts = LatencyTable.load(path).detector_latency().predict(builtin_structure("maedet_s"))
    assert min(parts.values()) > 0 and parts["total_ms"] > parts["backbone_ms"]
    validated = validate_detectors(path, 1, rounds=1, progress=False)
    report = validated.detector["validation"]
    assert report["count"] == 4 and report["earlier"]["count"] == 4
    assert set(report["references"]) == {"maedet_s_gfl", "maedet_m_gfl", "maedet_l_gfl", "resnet50_gfl",
                                         "resnet101_gfl"}  # fmt: skip
    assert (tmp_path / "tiny.validation.png").is_file()


def test_bench_detector_profile_errors_are_one_sentence(tmp_path, capsys):
    from maedet.bench.cli import main as bench

    old = synthetic_table(with_detector=False).save(tmp_path / "old.json")
    int8 = synthetic_table(with_detector=False)
    int8.target = {**int8.target, "precision": "int8"}
    int8_path = int8.save(tmp_path / "int8.json")
    cases = [
        (["--validate", str(old), "--detector"], "no detector section"),
        (["--detector", "--transfer", str(old), "--out", str(tmp_path / "n.json")], "not with --transfer"),
        (["--detector", "--out", str(old), "--input-size", "640"], "already a profiled table"),
        (["--detector"], "needs --out"),
        (["--detector", "--out", str(int8_path)], "ONNX Runtime CPU fp32"),
        (["--detector", "--out", str(int8_path), "--input-size", "320"], "ONNX Runtime CPU fp32"),  # its own size
    ]
    for argv, message in cases:
        assert bench(["profile", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert json.loads(old.read_text()) == synthetic_table(with_detector=False).to_dict()  # nothing half-written


def test_info_says_what_the_detector_section_holds():
    from maedet.bench.profile import describe_table

    with_section = describe_table(synthetic_table())
    assert "detector: FPN 256 + GFocalV2 head (4 stacked convs)" in with_section
    assert "resnet50_gfl" in with_section and "scale 1.250" in with_section
    assert "detector: none (backbones only; maedet-bench profile --detector" in describe_table(synthetic_table(False))


def test_the_detector_fit_recovers_known_roles_and_scale():
    """Kernel times made from known role models and a known neck-and-head scale: the fit predicts them back."""
    from maedet.bench.profile_detector import CATEGORIES, _unit_ops, fit_detector_section, train_units
    from maedet.bench.profile_measure import Timing
    from maedet.zoo.latency import op_features
    from maedet.zoo.latency.detector import DetectorLatency, neck_head_ops

    table, truth = synthetic_table(), synthetic_table().detector
    true_coefs = {r: np.asarray(c) for r, c in truth["roles"].items()}
    units, timings, anchor = train_units(6, 0, SIZE), {}, 30.0
    for name, unit in units.items():
        ops = _unit_ops(unit)
        kernels = {key: [sum(float(op_features(op, BATCH, BLOCK) @ true_coefs[role]) for op in ops if op.role == role)]
                   for key, role in CATEGORIES.items()}  # fmt: skip
        model = DetectorLatency(table, {**truth, "head": unit.head.to_dict()})
        raw = sum(model.op_ms(op) for op in neck_head_ops(detector_widths(unit.structure), unit.head, unit.size))
        total = table.predict_ms(unit.structure) + DETECTOR_SCALE * raw + kernels["det.post"][0]
        timings[name] = Timing([total], [anchor], kernels)
    section = fit_detector_section(table, units, timings, anchor)
    assert section["calibration"]["scale"] == pytest.approx(DETECTOR_SCALE, rel=1e-6)
    fitted, expected = DetectorLatency(table, section), table.detector_latency()
    for name in ("maedet_s", "maedet_m", "r50_like_init"):
        got, want = fitted.predict(builtin_structure(name)), expected.predict(builtin_structure(name))
        assert got["total_ms"] == pytest.approx(want["total_ms"], rel=1e-6)
        assert got["postprocess_ms"] == pytest.approx(want["postprocess_ms"], rel=1e-6)


def test_the_neck_and_head_scale_is_calibrated_on_the_priced_fpn_width():
    """As measured at 640 px, detectors with a narrower FPN than the priced 256 run their neck and head faster than
    the operator sum says (0.7× here): they do not drag the scale, and the ResNet-50 detector, whose backbone time
    the table measured, calibrates it beside the 256-wide fitted one."""
    from maedet.bench.profile_detector import CATEGORIES, DetectorUnit, fit_detector_section, train_units
    from maedet.bench.profile_measure import Timing
    from maedet.zoo.latency import op_features
    from maedet.zoo.latency.detector import DetectorLatency, neck_head_ops, post_op

    table, truth = synthetic_table(), synthetic_table().detector
    true_coefs = {r: np.asarray(c) for r, c in truth["roles"].items()}
    units, timings, anchor = train_units(6, 0, SIZE), {}, 30.0
    resnet = DetectorUnit("resnet50_gfl", 256, SIZE)

    def timing(unit: DetectorUnit, widths: tuple[int, ...], backbone_ms: float, neck_factor: float) -> Timing:
        ops = [*neck_head_ops(widths, unit.head, unit.size), post_op(unit.head, unit.size)]
        kernels = {key: [sum(float(op_features(op, BATCH, BLOCK) @ true_coefs[role]) for op in ops if op.role == role)]
                   for key, role in CATEGORIES.items()}  # fmt: skip
        model = DetectorLatency(table, {**truth, "head": unit.head.to_dict()})
        raw = sum(model.op_ms(op) for op in neck_head_ops(widths, unit.head, unit.size))
        return Timing([backbone_ms + neck_factor * DETECTOR_SCALE * raw + kernels["det.post"][0]], [anchor], kernels)

    for name, unit in units.items():
        factor = 1.0 if unit.fpn_channels == 256 else 0.7
        timings[name] = timing(unit, detector_widths(unit.structure), table.predict_ms(unit.structure), factor)
    timings["resnet50_gfl"] = timing(resnet, (512, 1024, 2048), table.references["resnet50"], 1.0)
    section = fit_detector_section(table, units, timings, anchor, {"resnet50_gfl": resnet})
    assert section["calibration"]["scale"] == pytest.approx(DETECTOR_SCALE, rel=1e-6)
