"""The profiled latency table: file format, validation, and the predictor's arithmetic on hand-made tables."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from maedet.errors import MaeDetError
from maedet.zoo import load_structure
from maedet.zoo.latency import (
    FEATURE_NAMES,
    TABLE_FORMAT,
    LatencyTable,
    Piece,
    fit_piece_model,
    load_latency_table,
    piece_features,
    predict_latency,
    structure_pieces,
)


def _table(coefs: dict[str, list[float]], batch: int = 1, size: int = 224, **extra) -> LatencyTable:
    target = {"backend": "ort-cpu", "precision": "fp32", "batch": batch, "input_size": size, "threads": 2}
    return LatencyTable(target=target, model=coefs, **extra)


def test_pieces_of_maedet_s_follow_its_stages():
    s = load_structure("maedet_s")
    pieces = structure_pieces(s, 224)
    assert pieces[0][0] == Piece("stem", 3, s.stem.out_chs, s.stem.kernel_size, 2, 224)
    sizes = [p.size for p, _ in pieces if p.kind == "first"]
    assert sizes == [112, 56, 28, 14]  # each first block reads the previous stage's output size
    total_blocks = sum(n for p, n in pieces if p.kind != "stem")
    assert total_blocks == sum(st.depth for st in s.stages)


def test_macs_features_add_up_to_the_zoo_conv_macs():
    from maedet.zoo import macs

    s = load_structure("maedet_m")
    total = sum(piece_features(p)[:4].sum() * n for p, n in structure_pieces(s, 320))
    assert total == pytest.approx(macs(s, 320, 320), rel=1e-12)


def test_prediction_is_the_hand_computed_linear_sum():
    # 1 ns per MAC of any kind, nothing else: latency = conv MACs × 1e-6 ms (plus calibration).
    ns_per_mac = [1e-6, 1e-6, 1e-6, 1e-6, 0.0, 0.0, 0.0]
    table = _table({k: ns_per_mac for k in ("stem", "first", "rest")})
    from maedet.zoo import macs

    s = load_structure("maedet_s")
    assert predict_latency(s, table) == pytest.approx(macs(s, 224, 224) * 1e-6, rel=1e-12)
    table.calibration = {"scale": 2.0, "offset_ms": 3.0}
    assert table.predict_ms(s) == pytest.approx(2 * macs(s, 224, 224) * 1e-6 + 3.0, rel=1e-12)
    overhead = _table({k: [0.0] * 6 + [0.5] for k in ("stem", "first", "rest")})
    blocks = 1 + sum(st.depth for st in s.stages)
    assert overhead.predict_ms(s) == pytest.approx(0.5 * blocks)  # one fixed overhead per piece run


def test_batch_scales_per_image_features_not_weights():
    p = Piece("rest", 64, 64, 3, 1, 28, 16)
    one, four = piece_features(p, 1), piece_features(p, 4)
    np.testing.assert_allclose(four[:5], 4 * one[:5])
    assert four[5] == one[5] and four[6] == one[6] == 1.0


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    truth = [2e-8, 4e-8, 6e-8, 0.0, 3e-7, 1e-8, 0.05]
    pieces = [
        Piece(kind, int(c), int(c * r), k, s, h, int(c / 4))
        for kind, c, r, k, s, h in zip(
            rng.choice(["first", "rest"], 80),
            rng.integers(16, 512, 80),
            rng.choice([1, 2], 80),
            rng.choice([3, 5], 80),
            rng.choice([1, 2], 80),
            rng.choice([14, 28, 56], 80),
            strict=True,
        )
    ]
    pieces = [
        Piece(
            p.kind,
            p.out_chs if p.kind == "rest" else p.in_chs,
            p.out_chs,
            p.kernel_size,
            1 if p.kind == "rest" else p.stride,
            p.size,
            max(8, p.bottleneck_chs),
        )
        for p in pieces
    ]
    ms = [float(piece_features(p) @ np.asarray(truth)) for p in pieces]
    model = fit_piece_model(pieces, ms, batch=1)
    table = _table(model)
    for p, m in zip(pieces, ms, strict=True):
        assert table.piece_ms(p) == pytest.approx(m, rel=1e-6)


def test_round_trip_and_versioning(tmp_path):
    table = _table({"rest": [1e-8] * 7, "first": [2e-8] * 7, "stem": [3e-8] * 7}, batch=2, size=320)
    table.references = {"resnet50": 12.5, "resnet101": 20.0}
    table.validation = {"rmspe_pct": 4.2}
    path = table.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["format"] == TABLE_FORMAT and data["features"] == list(FEATURE_NAMES)
    again = load_latency_table(path)
    s = load_structure("maedet_m")
    assert again.predict_ms(s) == table.predict_ms(s)
    assert again.references == table.references and again.batch == 2 and again.input_size == 320
    with pytest.raises(MaeDetError, match="profiled at batch 2, not 1"):
        load_latency_table(path, batch=1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"a": 1}', "not a maedet latency table"),
        ('{"format": "maedet-latency-table/99"}', "this maedet reads"),
        ("[" * 100000, "not valid JSON"),
    ],
)
def test_foreign_or_malformed_tables_get_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MaeDetError, match=message):
        load_latency_table(path)


def test_malformed_model_and_special_files_are_refused(tmp_path):
    good = _table({k: [1e-8] * 7 for k in ("stem", "first", "rest")}).to_dict()
    bad = dict(good, model={"rest": [1.0, -1.0, 0, 0, 0, 0, 0]})
    (tmp_path / "neg.json").write_text(json.dumps(bad))
    with pytest.raises(MaeDetError, match="non-negative"):
        load_latency_table(tmp_path / "neg.json")
    with pytest.raises(MaeDetError, match="not a regular file"):
        load_latency_table("/dev/zero")
    with pytest.raises(MaeDetError, match="cannot read"):
        load_latency_table(tmp_path / "missing.json")


def test_builtin_names_need_batch_and_size():
    with pytest.raises(MaeDetError, match="needs a batch size"):
        load_latency_table("v100-fp16")
    v100 = load_latency_table("v100-fp16", batch=32, input_size=480)
    assert predict_latency(load_structure("maedet_m"), v100) / 32 == pytest.approx(0.826427609216266, rel=1e-12)


def test_the_predictor_module_imports_no_runtime():
    code = (
        "import sys, ast, pathlib, maedet.zoo.latency as m;"
        "tree = ast.parse(pathlib.Path(m.__file__).read_text());"
        "names = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))"
        " for a in n.names} | {n.module.split('.')[0] for n in ast.walk(tree)"
        " if isinstance(n, ast.ImportFrom) and n.module};"
        "print(sorted(names & {'torch', 'onnxruntime', 'onnx', 'timm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
