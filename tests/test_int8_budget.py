"""INT8 under an accuracy budget: the sensitivity ranking with ONNX Runtime's real quantizer, the greedy selection,
the file's record of it, the command end to end, and its one-sentence refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

import maedet
from maedet.detect.accuracy_measure import export_main
from maedet.export import ExportError
from maedet.export.cli import main as export_cli_main
from maedet.export.int8_budget import (
    OutputError,
    budgeted_int8,
    quantized_layers,
    rank_layers,
    select_float_layers,
)
from maedet.export.metadata import read_metadata
from maedet.export.onnx_export import torch_to_onnx
from maedet.export.precision import quantize_int8
from maedet.export.tensorrt import float_layer_indices
from maedet.runtime import ort_session, run_session
from maedet.zoo import Stage, Stem, Structure
from maedet.zoo.detector_folder import save_detector_folder

BROKEN = "/convs.4/Conv"


class OutlierNet(torch.nn.Module):
    """Five convs; the last has, in every output channel, one weight of 1000 on an input channel that is always 0.

    In float that weight multiplies zeros and changes nothing; per-channel INT8 weights give it the whole range
    (scale 1000/127), so every other weight of the layer rounds to 0 and the output vanishes. It is the last layer
    because ONNX Runtime CPU re-quantizes (per tensor) the weights of a float Conv whose input is dequantized and
    whose output is quantized again (its WeightBiasQuantization optimizer, docs/int8.md): a float layer inside a
    quantized chain only stays float in ONNX Runtime with a float neighbour.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        chans = [(3, 8, 3), (8, 8, 3), (8, 8, 3), (8, 8, 3), (8, 4, 1)]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(i, o, k, padding=k // 2) for i, o, k in chans)
        with torch.no_grad():
            for conv in self.convs:
                conv.bias.zero_()
            self.convs[3].weight[7].zero_()  # channel 7 of the fourth conv's output is 0 everywhere
            self.convs[4].weight[:, 7, 0, 0] = 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            x = torch.relu(conv(x))
        return self.convs[-1](x)


@pytest.fixture(scope="module")
def outlier_net() -> tuple[onnx.ModelProto, list[np.ndarray], np.ndarray, np.ndarray]:
    """The network as ONNX, 8 calibration batches, a held-out batch and PyTorch's output on it."""
    net = OutlierNet().eval()
    fp32 = torch_to_onnx(net, torch.zeros(1, 3, 32, 32), ["out"], dynamic=False, opset=17, spatial_outputs=False)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    held = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(held)).numpy()
    return fp32, calib, held, expected


class Agreement:
    """A real measure: 100 × (1 − relative squared error) of a file's output on held-out data, in ONNX Runtime."""

    name = "agreement"

    def __init__(self, held: np.ndarray, expected: np.ndarray) -> None:
        self.held, self.expected = held, expected

    def __call__(self, path: Path) -> float:
        out = run_session(ort_session(str(path)), self.held)["out"]
        return 100 * (1 - float(((out - self.expected) ** 2).sum() / (self.expected**2).sum()))


def _serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def test_the_quantized_layers_are_the_convs_not_the_folded_relus(outlier_net) -> None:
    fp32, calib, _, _ = outlier_net
    int8 = quantize_int8(fp32, calib, mode="cpu")
    assert quantized_layers(fp32, int8) == [f"/convs.{i}/Conv" for i in range(5)]


def test_calibration_runs_once_and_its_cached_ranges_give_the_same_file(outlier_net, tmp_path) -> None:
    fp32, calib, _, _ = outlier_net
    cache = tmp_path / "calibration.json"
    first = quantize_int8(fp32, calib, mode="cpu", calibration_cache=cache)
    assert cache.is_file()
    cached = quantize_int8(fp32, calib[:1], mode="cpu", calibration_cache=cache)  # one batch: ranges from the cache
    fresh = quantize_int8(fp32, calib[:1], mode="cpu")  # one batch, calibrated again: other ranges
    inits = [{i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer} for m in (first, cached, fresh)]
    scales = [name for name in inits[0] if name.endswith("_scale")]
    assert scales and all(np.array_equal(inits[0][n], inits[1][n]) for n in scales)
    assert not all(np.array_equal(inits[0][n], inits[2][n]) for n in scales)


def test_the_layer_that_breaks_under_int8_is_ranked_first(outlier_net) -> None:
    fp32, calib, _, _ = outlier_net
    layers = quantized_layers(fp32, quantize_int8(fp32, calib, mode="cpu"))
    ranking = rank_layers(layers, lambda names: quantize_int8(fp32, calib, mode="cpu", exclude_nodes=names),
                          OutputError(fp32, calib[:2]))  # fmt: skip
    assert ranking[0][0] == BROKEN
    assert ranking[0][1] > 0.5 > max(gain for _, gain in ranking[1:])  # it alone carries the error


def test_the_budget_keeps_only_the_broken_layer_in_float_and_records_it(outlier_net, tmp_path) -> None:
    fp32, calib, held, expected = outlier_net
    result = budgeted_int8(fp32, calib, measure=Agreement(held, expected), max_drop=1.0, assemble=_serialize,
                           mode="cpu")  # fmt: skip
    assert result.int8 < 50 and result.fp32 > 99.99  # full INT8 is broken; fp32 agrees with PyTorch
    assert result.float_layers[0] == BROKEN and result.drop <= 1.0
    if len(result.float_layers) > 1:
        # x86 CPUs without VNNI multiply uint8 by int8 in saturating 16-bit pairs (ONNX Runtime's MLAS on AVX2), so
        # another layer can lose points there too; the greedy then keeps it only because the broken one was not enough
        alone = tmp_path / "alone.onnx"
        alone.write_bytes(quantize_int8(fp32, calib, mode="cpu", exclude_nodes=[BROKEN]).SerializeToString())
        assert result.fp32 - Agreement(held, expected)(alone) > 1.0
    assert not any(n.op_type == "DequantizeLinear" and n.output[0].startswith("convs.4.weight")
                   for n in result.network.graph.node)  # fmt: skip
    meta = result.metadata()
    assert meta["int8_float_layers"] == result.float_layers
    budget = meta["int8_budget"]
    assert budget["measure"] == "agreement" and budget["candidates"] == 5 and budget["max_drop"] == 1.0
    assert list(budget["sensitivity"]) == result.float_layers and budget["sensitivity"][BROKEN] > 0.5
    assert set(budget["latency_ms"]) == {"fp32", "int8", "budgeted"} and min(budget["latency_ms"].values()) > 0


def test_an_impossible_budget_is_one_sentence(outlier_net) -> None:
    fp32, calib, held, expected = outlier_net
    with pytest.raises(ExportError, match=r"no INT8 file keeps the agreement drop within 1 points .*nothing was"):
        budgeted_int8(fp32, calib, measure=Agreement(held, expected), max_drop=1.0, assemble=_serialize,
                      mode="cpu", max_float_layers=0)  # fmt: skip


# ------------------------------------------------------------------------------------------- greedy selection
GAINS = {"a": 3.0, "b": 0.5, "c": 1.0, "d": 0.2}  # what keeping each layer in float gives back, in points


def _score(names) -> float:
    return 90.0 + sum(GAINS[n] for n in names)  # full INT8 scores 90; fp32 scores 95


@pytest.mark.parametrize(
    ("max_drop", "limit", "expected", "tried"),
    [
        (2.0, None, ["a"], [1]),  # 93 ≥ 95 − 2
        (1.0, None, ["a", "c"], [1, 2]),  # 93, then 94
        (0.6, None, ["a", "c", "b"], [1, 2, 4, 3]),  # 93, 94, 94.7 within: bisect 2..4, 94.5 within
        (0.0, None, None, [1, 2, 4]),  # all four give 94.7 < 95
        (1.0, 1, None, [1]),  # the cap stops before the second layer
        (0.4, 3, None, [1, 2, 3]),  # doubling past the cap tries the cap itself
    ],
)
def test_the_search_keeps_the_shortest_ranked_prefix_within_the_budget(max_drop, limit, expected, tried) -> None:
    ranked = ["a", "c", "b", "d"]
    selection = select_float_layers(ranked, _score, 95.0, max_drop, limit)
    assert selection.float_layers == expected
    assert [k for k, _ in selection.tried] == tried
    assert all(score == pytest.approx(_score(ranked[:k])) for k, score in selection.tried)
    if expected is not None:
        assert selection.score == pytest.approx(_score(expected))


@pytest.mark.parametrize("needed", [1, 2, 3, 37, 128, 129, 206, 207])
def test_the_search_finds_the_shortest_prefix_of_a_long_list_in_logarithmic_scores(needed) -> None:
    """207 layers (the demo detector's count), each giving back a little; the first ``needed`` suffice."""
    ranked = [f"layer{i}" for i in range(207)]

    def score(names) -> float:
        return 90.0 + 5.0 * min(1.0, len(names) / needed)

    selection = select_float_layers(ranked, score, 95.0, 0.0)
    assert selection.float_layers == ranked[:needed]
    assert len(selection.tried) <= 2 * 8 + 1  # 2·ceil(log2 207) + 1, against up to 207 one by one


# ------------------------------------------------------------------------------------------- TensorRT's layers
def test_tensorrt_layers_are_matched_to_the_float_nodes_by_name() -> None:
    nodes = ["/Relu", "/Relu_1", "/conv/Conv", "/head/Add"]
    layers = ["/Relu", "/Relu_1", "/conv/Conv", "/conv/Conv_output", "/head/Add", "/head/Add_1", "other"]
    picked, missing = float_layer_indices(layers, ["/Relu", "/conv/Conv", "/gone/Conv"], nodes)
    assert picked == [0, 2, 3]  # "/Relu_1" is its own node, not a piece of "/Relu"
    assert missing == ["/gone/Conv"]


# ------------------------------------------------------------------------------------------- the command
TINY = Structure(Stem(3, 16, 2, 3), (Stage(16, 24, 2, 3, 1, 16), Stage(24, 32, 2, 3, 1, 16),
                                     Stage(32, 48, 2, 3, 1, 24), Stage(48, 64, 2, 3, 1, 32)))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> tuple[Path, Path]:
    """A random 3-class detector folder and 6 labelled 64-pixel images of three shapes."""
    from maedet.train.shapes import generate_shapes

    root = tmp_path_factory.mktemp("int8budget")
    torch.manual_seed(0)
    model = maedet.create_detector("gfl", structure=TINY, num_classes=3, fpn_channels=32)
    (root / "det").mkdir()
    save_detector_folder(model.eval(), root / "det")
    generate_shapes(root / "data", train=6, val=6, size=64, classes=["circle", "square", "triangle"])
    return root / "det", root / "data"


@pytest.mark.slow
def test_the_command_records_the_budget_in_the_file(tiny_set, tmp_path, capsys) -> None:
    det, data = tiny_set
    out = tmp_path / "b.onnx"
    argv = [str(det), "--onnx", str(out), "--input-size", "64", "--int8", "--int8-mode", "cpu", "--calib",
            str(data / "train"), "--max-ap-drop", "100", "--data", str(data / "val.json"), "--images",
            str(data / "val"), "--no-check", "-q"]  # fmt: skip
    assert export_main(argv) == 0
    shown = capsys.readouterr().out
    assert "full INT8" in shown and "float layers (0 of" in shown
    meta = read_metadata(out)
    assert meta["int8_float_layers"] == [] and meta["precision"] == "int8"
    budget = meta["int8_budget"]
    assert budget["measure"] == "AP" and budget["max_drop"] == 100 and budget["candidates"] > 10
    assert 0 <= budget["fp32"] <= 100 and budget["final"] == budget["int8"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-ap-drop", "1", "--data", "V", "--images", "I"], "--max-ap-drop needs --int8"),
        (["--int8", "--max-ap-drop", "1"], "--max-ap-drop needs --data FILE and --images DIR"),
        (["--int8", "--max-ap-drop", "1", "--data", "V"], "--data and --images go together"),
        (["--int8", "--max-ap-drop", "-1", "--data", "V", "--images", "I"], "from 0 to 100, not -1"),
        (["--int8", "--max-ap-drop", "nan", "--data", "V", "--images", "I"], "from 0 to 100, not nan"),
        (["--int8", "--data", "V", "--images", "I"], "--data/--images go with --max-ap-drop"),
        (["--int8", "--max-float-layers", "2"], "--max-float-layers go with --max-ap-drop"),
        (["--int8", "--max-ap-drop", "1", "--data", "V", "--images", "I", "--max-float-layers", "-1"],
         "--max-float-layers must be a whole number of at least 0"),
        (["--int8", "--max-ap-drop", "1", "--data", "missing.json", "--images", "I"], "does not exist"),
    ],
)  # fmt: skip
def test_bad_budget_flags_are_one_sentence(tiny_set, extra, message, tmp_path, capsys) -> None:
    det, data = tiny_set
    swap = {"V": str(data / "val.json"), "I": str(data / "val")}
    argv = [str(det), "--onnx", str(tmp_path / "x.onnx"), "--input-size", "64"] + [swap.get(a, a) for a in extra]
    assert export_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("maedet-export: error:") and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_without_the_detect_layer_the_ap_flags_are_one_sentence(tiny_set, tmp_path, capsys) -> None:
    det, data = tiny_set
    argv = [str(det), "--onnx", str(tmp_path / "x.onnx"), "--int8", "--max-ap-drop", "1", "--data",
            str(data / "val.json"), "--images", str(data / "val")]  # fmt: skip
    assert export_cli_main(argv) == 2
    assert "need the maedet-export command" in capsys.readouterr().err


def test_a_backbone_has_no_ap_to_measure(tiny_set, tmp_path, capsys) -> None:
    _, data = tiny_set
    argv = ["resnet18", "--onnx", str(tmp_path / "x.onnx"), "--int8", "--max-ap-drop", "1", "--data",
            str(data / "val.json"), "--images", str(data / "val")]  # fmt: skip
    assert export_main(argv) == 2
    assert "measure a detector's COCO AP; a backbone has none" in capsys.readouterr().err


def test_the_console_script_enters_through_the_detect_layer() -> None:
    from maedet.launch import _TOOLS

    assert _TOOLS["maedet-export"] == ("maedet.detect.accuracy_measure", "export_main")


class Cosine:
    """A backbone's measure: 100 × the lowest cosine of a file's outputs with the fp32 file's, on one batch."""

    name = "cosine"

    def __init__(self, reference: Path, batch: np.ndarray) -> None:
        self.batch = batch
        self.reference = run_session(ort_session(str(reference)), batch)

    def __call__(self, path: Path) -> float:
        out = run_session(ort_session(str(path)), self.batch)
        return 100 * min(
            float(np.dot(out[k].ravel(), ref.ravel()) / (np.linalg.norm(out[k]) * np.linalg.norm(ref)))
            for k, ref in self.reference.items()
        )


@pytest.mark.slow
def test_a_backbone_takes_any_measure_through_the_python_api(tmp_path) -> None:
    from maedet.export import export_onnx

    torch.manual_seed(0)  # the same random weights in both exports
    fp32 = export_onnx("resnet18", tmp_path / "f.onnx", input_size=(64, 64), check=False)
    torch.manual_seed(0)
    batch = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    result = export_onnx("resnet18", tmp_path / "q.onnx", input_size=(64, 64), precision="int8", max_ap_drop=50,
                         accuracy_measure=Cosine(fp32.path, batch), check=False)  # fmt: skip
    meta = read_metadata(result.path)
    assert meta["int8_float_layers"] == [] and meta["int8_budget"]["measure"] == "cosine"
    assert meta["int8_budget"]["fp32"] == pytest.approx(100, abs=1e-3) and 50 < meta["int8_budget"]["int8"] < 100


class FloatShare:
    """A measure that any quantization loses: 100 × the share of the file's nodes that are not Q/DQ."""

    name = "float share"

    def __call__(self, path: Path) -> float:
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        return 100 * sum(op not in ("QuantizeLinear", "DequantizeLinear") for op in ops) / len(ops)


@pytest.mark.slow
def test_an_impossible_budget_on_the_command_line_is_one_sentence_and_writes_nothing(tiny_set, tmp_path, capsys):
    det, data = tiny_set
    out = tmp_path / "x.onnx"
    argv = [str(det), "--onnx", str(out), "--input-size", "64", "--int8", "--calib", str(data / "train"),
            "--max-ap-drop", "1", "--max-float-layers", "0", "--data", "unused", "--images", "unused"]  # fmt: skip
    assert export_cli_main(argv, accuracy_measure_factory=lambda data, images: FloatShare()) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("maedet-export: error: no INT8 file keeps the float share drop within 1 points")
    assert err[-1].endswith("nothing was written.") and not out.exists()
