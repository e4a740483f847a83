"""The profiled latency table: file format, validation, and the predictor's arithmetic on hand-made tables."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from maedet.bench.profile_fit import fit_op_model
from maedet.errors import MaeDetError
from maedet.zoo import cost, load_structure, macs
from maedet.zoo.latency import (
    FEATURE_NAMES,
    TABLE_FORMAT,
    LatencyTable,
    Op,
    Piece,
    load_latency_table,
    op_features,
    piece_ops,
    predict_latency,
    structure_pieces,
)

ROLES = ("stem", "pw", "k3s1", "k3s2", "k5s1", "k5s2", "pool", "add")


def _table(roles: dict[str, list[float]], batch: int = 1, size: int = 224, block: int = 1, **extra) -> LatencyTable:
    target = {"backend": "ort-cpu", "precision": "fp32", "batch": batch, "input_size": size, "threads": 2}
    return LatencyTable(target=target, model={"channel_block": block, "roles": roles}, **extra)


def test_pieces_of_maedet_s_follow_its_stages():
    s = load_structure("maedet_s")
    pieces = structure_pieces(s, 224)
    assert pieces[0][0] == Piece("stem", 3, s.stem.out_chs, s.stem.kernel_size, 2, 224)
    sizes = [p.size for p, _ in pieces if p.kind == "first"]
    assert sizes == [112, 56, 28, 14]  # each first block reads the previous stage's output size
    total_blocks = sum(n for p, n in pieces if p.kind != "stem")
    assert total_blocks == sum(st.depth for st in s.stages)


def test_operators_of_a_first_block_as_the_model_builds_it():
    ops = piece_ops(Piece("first", 48, 272, 3, 2, 80, 120))
    assert ops == {
        "conv1": Op("pw", 48, 120, 1, 1, 80),
        "conv2": Op("k3s2", 120, 120, 3, 2, 80),
        "conv3": Op("pw", 120, 272, 1, 1, 40),
        "downsample": Op("pool", 48, 48, 2, 2, 80),
        "shortcut": Op("pw", 48, 272, 1, 1, 40),
        "add": Op("add", 272, 272, 1, 1, 40),
    }
    rest = piece_ops(Piece("rest", 272, 272, 5, 1, 40, 120))
    assert set(rest) == {"conv1", "conv2", "conv3", "add"} and rest["conv2"].role == "k5s1"


def test_macs_features_add_up_to_the_zoo_conv_macs():
    s = load_structure("maedet_m")
    total = sum(
        op_features(op)[0] * n for p, n in structure_pieces(s, 320) for op in piece_ops(p).values()
    )  # channel block 1: the real channel counts
    assert total == pytest.approx(macs(s, 320, 320), rel=1e-12)


def test_prediction_is_the_hand_computed_linear_sum():
    # 1 ns per MAC of any conv, nothing else: latency = conv MACs × 1e-6 ms (times the calibration).
    table = _table({key: [1e-06, 0.0, 0.0, 0.0, 0.0] for key in ROLES})
    s = load_structure("maedet_s")
    assert predict_latency(s, table) == pytest.approx(macs(s, 224, 224) * 1e-6, rel=1e-12)
    table.calibration = {"scale": 2.0, "offset_ms": 3.0}
    assert table.predict_ms(s) == pytest.approx(2 * macs(s, 224, 224) * 1e-6 + 3.0, rel=1e-12)
    # a fixed cost per convolution the runtime runs: the stem, 3 per block, 1 shortcut per stage
    table.calibration = {"scale": 2.0, "per_conv_ms": 0.25, "offset_ms": 3.0}
    convs = 1 + sum(3 * st.depth + 1 for st in s.stages)
    assert convs == cost(s).layers + len(s.stages)
    assert table.predict_ms(s) == pytest.approx(2 * macs(s, 224, 224) * 1e-6 + 0.25 * convs + 3.0, rel=1e-12)
    # a fixed 0.5 ms per operator: stem, then per stage 3 convs + shortcut + pool (stride 2) + add, 4 per repeat
    overhead = _table({key: [0.0, 0.0, 0.0, 0.0, 0.5] for key in ROLES})
    ops = 1 + sum(5 + (st.stride == 2) + 4 * (st.depth - 1) for st in s.stages)
    assert overhead.predict_ms(s) == pytest.approx(0.5 * ops)


def test_roles_the_profile_never_met():
    coefs = [1e-6, 0.0, 0.0, 0.0, 0.1]
    table = _table({"stem": coefs, "pw": coefs, "k3s1": coefs, "k5s1": [2e-6, 0, 0, 0, 0.1], "k3s2": coefs})
    k7 = Op("k7s1", 64, 64, 7, 1, 28)
    assert table.op_ms(k7) == pytest.approx(2e-6 * 28 * 28 * 64 * 64 * 49 + 0.1)  # nearest kernel at stride 1: 5
    assert table.op_ms(Op("k5s2", 64, 64, 5, 2, 28)) == table.op_ms(Op("k3s2", 64, 64, 5, 2, 28))
    assert table.op_ms(Op("pool", 64, 64, 2, 2, 28)) == 0.0  # never timed: the runtime fused it away
    assert table.op_ms(Op("add", 64, 64, 1, 1, 28)) == 0.0
    no_pw = _table({"stem": coefs, "pw": coefs})
    with pytest.raises(MaeDetError, match="no model for 'k3s1'"):
        no_pw.op_ms(Op("k3s1", 64, 64, 3, 1, 28))


def test_batch_scales_per_image_features_not_weights():
    op = Op("k3s1", 64, 64, 3, 1, 28)
    one, four = op_features(op, 1), op_features(op, 4)
    np.testing.assert_allclose(four[:3], 4 * one[:3])
    assert four[3] == one[3] and four[4] == one[4] == 1.0


def test_channel_block_rounds_channels_up_except_the_stem_input():
    op = Op("pw", 120, 40, 1, 1, 10)
    assert op_features(op, 1, 16)[0] == 100 * 128 * 48 and op_features(op, 1, 1)[0] == 100 * 120 * 40
    stem = Op("stem", 3, 40, 3, 2, 20)
    assert op_features(stem, 1, 16)[0] == 100 * 3 * 48 * 9


def _random_ops(rng: np.random.Generator, count: int) -> list[Op]:
    ops = []
    for _ in range(count):
        k, s = int(rng.choice([3, 5])), int(rng.choice([1, 2]))
        c_in, c_out = (int(rng.integers(2, 64)) * 8 for _ in range(2))
        h = int(rng.choice([10, 20, 40, 80]))
        role = str(rng.choice(["pw", "kxk", "pool", "stem"]))
        if role == "kxk":
            ops.append(Op(f"k{k}s{s}", c_in, c_in, k, s, h))
        elif role == "stem":
            ops.append(Op("stem", 3, c_out, 3, 2, 4 * h))
        elif role == "pool":
            ops.append(Op("pool", c_in, c_in, 2, 2, h))
        else:
            ops.append(Op("pw", c_in, c_out, 1, 1, h))
    return ops


def test_fit_recovers_known_coefficients_and_the_channel_block():
    rng = np.random.default_rng(0)
    truth = {r: [float(rng.uniform(1, 3)) * 1e-8, 2e-7, 1e-7, 1e-8, 0.05] for r in ROLES}
    truth["pool"][0] = 0.0
    ops = _random_ops(rng, 400)
    true_table = _table(truth, block=16)
    single = [([op], true_table.op_ms(op)) for op in ops]
    model = fit_op_model(single, batch=1)
    assert model["channel_block"] == 16 and model["fit_rmspe_pct"] < 1e-6
    fitted = _table(model["roles"], block=model["channel_block"])
    for op in ops[:50]:
        assert fitted.op_ms(op) == pytest.approx(true_table.op_ms(op), rel=1e-6)
    # whole pieces timed on their own (GPU runtimes) fit the same per-role model
    pieces = [
        Piece("first" if i % 2 else "rest", 64 + 8 * i, 64 + 8 * i, 3, 1, 20, 32 + 8 * (i % 9)) for i in range(60)
    ]
    pieces += [Piece("first", 32 + 8 * i, 256, 5, 2, 40, 64 + 8 * (i % 5)) for i in range(30)]
    timed = [(list(piece_ops(p).values()), true_table.piece_ms(p)) for p in pieces]
    joint = _table(fit_op_model(timed + single, batch=1)["roles"], block=16)
    for p in pieces[::7]:
        assert joint.piece_ms(p) == pytest.approx(true_table.piece_ms(p), rel=1e-5)


def test_fit_refuses_no_samples():
    with pytest.raises(MaeDetError, match="no timed samples"):
        fit_op_model([], batch=1)


def test_round_trip_and_versioning(tmp_path):
    table = _table({key: [1e-08, 1e-09, 1e-09, 1e-09, 0.01] for key in ROLES}, batch=2, size=320, block=16)
    table.references = {"resnet50": 12.5, "resnet101": 20.0}
    table.validation = {"rmspe_pct": 4.2}
    table.measurement = {"method": "operators inside networks (runtime profiler)"}
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["format"] == TABLE_FORMAT and data["features"] == list(FEATURE_NAMES)
    again = load_latency_table(path)
    s = load_structure("maedet_m")
    assert again.predict_ms(s) == table.predict_ms(s)
    assert again.references == table.references and again.batch == 2 and again.input_size == 320
    assert again.measurement == table.measurement and again.model["channel_block"] == 16
    with pytest.raises(MaeDetError, match="profiled at batch 2, not 1"):
        load_latency_table(path, batch=1)
    older = dict(data, format="maedet-latency-table/1")
    (tmp_path / "old.json").write_text(json.dumps(older))
    with pytest.raises(MaeDetError, match="profile the target again"):
        load_latency_table(tmp_path / "old.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"a": 1}', "not a maedet latency table"),
        ('{"format": "maedet-latency-table/99"}', "this maedet reads"),
        ('{"format": "something-else/1"}', "this maedet reads"),
        ("[" * 100000, "nested too deeply"),
    ],
)
def test_foreign_or_malformed_tables_get_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MaeDetError, match=message):
        load_latency_table(path)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"roles": {"pw": [1.0, -1.0, 0, 0, 0], "stem": [0.0] * 5}}, "non-negative"),
        ({"roles": {"pw": [1.0] * 7, "stem": [0.0] * 5}}, "5 non-negative"),
        ({"roles": {"pw": [0.0] * 5, "stem": [0.0] * 5, "k4s1": [0.0] * 5}}, "unknown operator role 'k4s1'"),
        ({"roles": {"stem": [0.0] * 5}}, "no 'pw' role"),
        ({"stem": [0.0] * 7}, "no fitted 'model'"),
        ({"channel_block": 0, "roles": {"pw": [0.0] * 5, "stem": [0.0] * 5}}, "channel_block"),
    ],
)
def test_malformed_models_are_refused(tmp_path, model, message):
    data = _table({"stem": [1e-8] * 5, "pw": [1e-8] * 5}).to_dict() | {"model": model}
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(MaeDetError, match=message):
        load_latency_table(tmp_path / "m.json")


def test_special_and_missing_files_are_refused(tmp_path):
    with pytest.raises(MaeDetError, match="not a regular file"):
        load_latency_table("/dev/zero")
    with pytest.raises(MaeDetError, match="cannot read"):
        load_latency_table(tmp_path / "missing.json")


def test_builtin_names_need_batch_and_size():
    with pytest.raises(MaeDetError, match="needs a batch size"):
        load_latency_table("v100-fp16")
    v100 = load_latency_table("v100-fp16", batch=32, input_size=480)
    assert predict_latency(load_structure("maedet_m"), v100) / 32 == pytest.approx(0.826427609216266, rel=1e-12)


@pytest.mark.slow
def test_the_predictor_package_imports_no_runtime():
    code = (
        "import sys, ast, pathlib, maedet.zoo.latency as m;"
        "trees = [ast.parse(p.read_text()) for p in pathlib.Path(m.__file__).parent.glob('*.py')];"
        "nodes = [n for t in trees for n in ast.walk(t)];"
        "names = {a.name.split('.')[0] for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))"
        " for a in n.names} | {n.module.split('.')[0] for n in nodes"
        " if isinstance(n, ast.ImportFrom) and n.module};"
        "print(sorted(names & {'torch', 'onnxruntime', 'onnx', 'timm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_table_whose_calibration_would_make_latencies_negative_is_refused(tmp_path):
    """scale -1 made every prediction negative, so every candidate fitted any budget (issue 17.4)."""
    table = _table({key: [1e-06, 0.0, 0.0, 0.0, 0.0] for key in ROLES})
    data = table.to_dict()
    for calibration in ({"scale": -1.0, "offset_ms": 0.0}, {"scale": 0.0, "offset_ms": 1.0}):
        with pytest.raises(MaeDetError, match="'scale' must be a positive number"):
            LatencyTable.from_dict({**data, "calibration": calibration})
    table.calibration = {"scale": 1.0, "offset_ms": -1e9}
    with pytest.raises(MaeDetError, match="a latency must be positive"):
        table.predict_ms(load_structure("maedet_s"))


# ------------------------------------------------------------------------------------------- issue 17: field checks
def _valid_table_dict() -> dict:
    return _table({"stem": [1e-8] * 5, "pw": [1e-8] * 5}).to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"samples": 5}, "'samples' must be a list of objects"),
        ({"samples": [1, 2]}, "'samples' must be a list of objects"),
        ({"validation": {"rmspe_pct": "low"}}, "validation figure 'rmspe_pct' must be a finite number"),
        ({"validation": {"unscaled": {"spearman_rho": [1]}}}, "unscaled validation figure 'spearman_rho'"),
        ({"validation": {"unscaled": 7}}, "'unscaled' figures must be an object"),
        ({"target": {"batch": 10**40, "input_size": 224}}, "target field 'batch' must be an integer from 1"),
        ({"target": {"batch": 1, "input_size": 10**15}}, "target field 'input_size'"),
        ({"target": {"batch": 1, "input_size": 224, "threads": "all"}}, "'threads' must be a positive integer"),
    ],
)
def test_table_fields_are_checked_by_type_and_range(tmp_path, change, message):
    (tmp_path / "t.json").write_text(json.dumps(_valid_table_dict() | change))
    with pytest.raises(MaeDetError, match=message):
        load_latency_table(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"batch": ' + "9" * 5000, "at most 64 are read"),  # past Python's 4300-digit conversion limit
        ('"batch": 1e999', "too large for a float"),  # json would read it as inf
        ('"batch": NaN', "not a finite number"),
    ],
)
def test_huge_and_non_finite_numbers_in_a_table_are_one_sentence(tmp_path, text, message):
    body = json.dumps(_valid_table_dict()).replace('"batch": 1', text, 1)
    (tmp_path / "t.json").write_text(body)
    with pytest.raises(MaeDetError, match=message):
        load_latency_table(tmp_path / "t.json")


def test_a_role_slower_at_one_feature_size_gets_that_sizes_own_model(tmp_path):
    """The runtime tiles a 1×1 conv differently at 80×80: 1.3× the per-MAC cost of the other sizes. The fit keeps a
    per-size model (``pw@80``) beside the role's, the table predicts both sizes right, writes and reads them back,
    and refuses a per-size model of a role the model lacks in one sentence."""
    rng = np.random.default_rng(1)
    base = [1.5e-8, 2e-7, 1e-7, 1e-8, 0.05]
    slow = [1.3 * base[0], *base[1:]]
    ops = [op for op in _random_ops(rng, 600) if op.role == "pw"]
    samples = [([op], float(op_features(op) @ np.asarray(slow if op.size == 80 else base))) for op in ops]
    model = fit_op_model(samples, batch=1, blocks=(1,), regimes=True)
    assert set(model["regimes"]) == {"pw@10", "pw@20", "pw@40", "pw@80"}
    table = _table({**model["roles"], "stem": base}, size=320)
    table.model["regimes"] = model["regimes"]
    table = LatencyTable.from_dict(table.to_dict())
    for op in ops[:40]:
        want = float(op_features(op) @ np.asarray(slow if op.size == 80 else base))
        assert table.op_ms(op) == pytest.approx(want, rel=1e-6)
    assert table.op_ms(Op("pw", 64, 64, 1, 1, 160)) == pytest.approx(  # a size the profile never timed: the role's
        float(op_features(Op("pw", 64, 64, 1, 1, 160)) @ np.asarray(model["roles"]["pw"])), rel=1e-9
    )
    data = table.to_dict()
    data["model"]["regimes"] = {"k7s1@80": base}
    with pytest.raises(MaeDetError, match=r"'k7s1@80' in the model's 'regimes' is not ROLE@SIZE"):
        LatencyTable.from_dict(data)
    for hostile in ("pw@" + "9" * 5000, "pw@²", "pw@0", "pw@"):
        data["model"]["regimes"] = {hostile: base}
        with pytest.raises(MaeDetError, match="is not ROLE@SIZE"):
            LatencyTable.from_dict(data)
    data["model"]["regimes"] = {"pw@80": [1.0, -1.0, 0.0, 0.0, 0.0]}
    with pytest.raises(MaeDetError, match="the model of 'pw@80' must be 5 non-negative numbers"):
        LatencyTable.from_dict(data)
