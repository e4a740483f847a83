"""Every bad input gets one clear sentence and exit code 2; no failure leaves a partial or replaced file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.nn as nn

import maedet
from maedet.export import ExportError, export_onnx
from maedet.export.cli import build_parser, main
from maedet.zoo import builtin_structure


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _no_leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
        (["maedet"], "needs a structure"),
        (["resnet18", "--structure", "maedet_s"], "only applies to MAE-DET"),
        (["maedet_s", "--input-size", "100000", "100"], "too large"),
        (["maedet_s", "--input-size", "16", "16"], "too small"),
        (["maedet_s", "--input-size", "0", "64"], "must be positive"),
        (["maedet_s", "--batch-size", "0"], "batch must be at least 1"),
        (["maedet_s", "--io-half"], "--io-half needs --half"),
        (["maedet_s", "--calib", "x"], "needs --int8"),
        (["maedet_s", "--int8-mode", "cpu"], "needs --int8"),
        (["maedet_s", "--trt", "{tmp}/m.engine", "--int8", "--int8-mode", "cpu"], "TensorRT cannot load"),
        (["maedet_s", "--opset", "3"], "opset 3"),
        (["maedet_s", "--logits", "--out-indices", "1"], "only applies to feature outputs"),
        (["maedet_s", "--trt", "{tmp}/m.engine", "--workspace", "0"], "--workspace"),
        (["maedet_s", "--trt", "{tmp}/m.engine", "--min-batch", "2"], "need --dynamic"),
        (["maedet_s", "--trt", "{tmp}/m.engine", "--dynamic", "--max-size", "32", "32"], "min ≤ opt ≤ max"),
    ],
)
def test_bad_arguments_exit_2_with_one_sentence(argv, expected, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--trt" not in argv:
        argv += ["--onnx", str(tmp_path / "out.onnx")]
    code, err = _run(argv, capsys)
    assert code == 2
    assert expected in _one_sentence(err)
    assert _no_leftovers(tmp_path) == []


def test_missing_output_path(capsys):
    code, err = _run(["maedet_s"], capsys)
    assert code == 2
    assert "--onnx OUT.onnx" in _one_sentence(err)


def test_output_folder_missing(tmp_path, capsys):
    code, err = _run(["maedet_s", "--onnx", tmp_path / "nope" / "m.onnx"], capsys)
    assert code == 2
    assert "does not exist" in _one_sentence(err)


def test_unreadable_structure_files(tmp_path, capsys):
    code, err = _run(["maedet", "--structure", tmp_path / "missing.json", "--onnx", tmp_path / "o.onnx"], capsys)
    assert code == 2
    assert "cannot read structure file" in _one_sentence(err)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "maedet-structure/1", "blocks": [{"class": "ConvKXBNRELU", "in": 3}]}')
    code, err = _run(["maedet", "--structure", bad, "--onnx", tmp_path / "o.onnx"], capsys)
    assert code == 2
    assert "bad.json" in _one_sentence(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_checkpoints(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code, err = _run(["maedet_s", "--checkpoint", tmp_path / "none.pth", "--onnx", out], capsys)
    assert code == 2
    assert "does not exist or is not a file" in _one_sentence(err)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all")
    code, err = _run(["maedet_s", "--checkpoint", garbage, "--onnx", out], capsys)
    assert code == 2
    assert "garbage.pth was refused: it does not load as plain weights" in _one_sentence(err)

    class Payload:  # pickles that run code are refused by weights_only loading
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    code, err = _run(["maedet_s", "--checkpoint", evil, "--onnx", out], capsys)
    assert code == 2
    system = f"{os.system.__module__}.system"  # posix.system, named though nothing in the file runs
    assert f"evil.pth was refused: it contains code-executing objects ({system})" in _one_sentence(err)
    assert "pwned" not in err

    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"backbone.body.block_list.0.conv1.weight": torch.zeros(8, 3, 3, 3)}}, wrong)
    code, err = _run(["maedet_s", "--checkpoint", wrong, "--onnx", out], capsys)
    assert code == 2
    assert "checkpoint wrong.pth does not fit model 'maedet_s'" in _one_sentence(err)
    assert not out.exists()


def test_info_on_non_onnx_file(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe garbage")
    code, err = _run(["--info", junk], capsys)
    assert code == 2
    assert "not a readable ONNX file" in _one_sentence(err)
    code, err = _run(["--info", tmp_path / "missing.onnx"], capsys)
    assert code == 2
    assert "no such file" in _one_sentence(err)


class InterruptedDuringExport(nn.Module):
    """A real backbone that is interrupted (Ctrl-C) while the ONNX exporter traces it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=32, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            raise KeyboardInterrupt
        return self.conv(x)


def test_interrupted_export_leaves_previous_file_untouched(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good file")
    with pytest.raises(KeyboardInterrupt):
        export_onnx(InterruptedDuringExport(), out, input_size=(64, 64), outputs="logits")
    assert out.read_bytes() == b"previous good file"
    assert _no_leftovers(tmp_path) == ["model.onnx"]


def test_failed_check_stage_leaves_no_file(tmp_path):
    """INT8 calibration on an unreadable image fails after the ONNX graph exists: nothing is written."""
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.png").write_bytes(b"not really a png")
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="cannot be read"):
        export_onnx("maedet_s", out, input_size=(64, 64), precision="int8", calib=calib)
    assert _no_leftovers(tmp_path) == ["calib"]


def test_api_rejects_bad_precision_and_module_with_structure(tmp_path):
    with pytest.raises(ExportError, match="precision must be one of"):
        export_onnx("maedet_s", tmp_path / "a.onnx", precision="int4")
    with pytest.raises(ExportError, match="already has its weights"):
        export_onnx(nn.Conv2d(3, 3, 1), tmp_path / "a.onnx", structure=builtin_structure("maedet_s"))
    assert _no_leftovers(tmp_path) == []


def test_version_and_one_line_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"maedet-export {maedet.__version__}"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"maedet-export {maedet.__version__}"
    assert main(["maedet_s", "--batch-size", "two"]) == 2  # an argparse usage error: one line, not the usage block
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("maedet-export: error: ") and "--batch-size" in err


def test_bad_input_is_exactly_one_stderr_line_with_the_program_name(tmp_path, capsys):
    code, err = _run(["no_such_model_xyz", "--onnx", tmp_path / "o.onnx"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "maedet-export: error: unknown model 'no_such_model_xyz': not a maedet model nor a registered timm model."
    ]


@pytest.mark.parametrize("size", [["640"], ["480x640"], ["480", "640"], ["480×640"]])
def test_input_size_takes_the_grammar_every_tool_takes(size):
    """Issue 17: the README's --input-size 640 and 480x640 work in maedet-export as in maedet-bench."""
    args = build_parser().parse_args(["maedet_s", "--onnx", "x.onnx", "--input-size", *size, "--max-size", "960"])
    assert args.input_size == ((640, 640) if size == ["640"] else (480, 640)) and args.max_size == (960, 960)


@pytest.mark.parametrize("size", [["640,800"], ["480", "640", "800"], ["0x640"], ["big"]])
def test_input_size_that_is_not_one_size_is_one_sentence(size, capsys):
    code, err = _run(["maedet_s", "--onnx", "x.onnx", "--input-size", *size], capsys)
    assert code == 2 and _one_sentence(err).startswith("maedet-export: error: argument --input-size: ")


@pytest.mark.slow
def test_info_is_a_result_on_stdout(tmp_path, capsys):
    """Issue 17: --info prints its table on stdout, like every tool's results; stderr stays empty."""
    out = tmp_path / "s.onnx"
    assert main(["maedet_s", "--onnx", str(out), "--input-size", "64", "--no-check", "-q"]) == 0
    capsys.readouterr()
    assert main(["--info", str(out)]) == 0
    captured = capsys.readouterr()
    assert "maedet_s" in captured.out and "color_order" in captured.out and captured.err == ""


def test_a_long_reason_is_cut_at_a_word_not_mid_word():
    """Issue 17: the hub client's reason used to end in ``try aga)``."""
    from maedet.export.errors import first_line

    reason = first_line(OSError("Please check your connection and try again or make sure the file is cached."), 40)
    assert reason == "Please check your connection and try…"


def test_a_missing_pretrained_overlay_file_is_one_sentence(tmp_path, capsys):
    missing = tmp_path / "r18.pth"
    opts = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(missing)}, "check": False}
    with pytest.raises(ExportError, match=f"the weights file {str(missing)!r} .* does not exist"):
        export_onnx("resnet18", tmp_path / "r.onnx", input_size=(64, 64), **opts)
    assert not (tmp_path / "r.onnx").exists()
