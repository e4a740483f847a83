"""The exporter and the shared file writers under hostile input (issue 12): what the fuzz module cannot show by exit
code.

A legal 250-byte file name must *work* through every writer; the memory estimate must be close to what PyTorch
really holds; Ctrl-C while torch is still importing must end in one line and exit 130.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from maedet.errors import MaeDetError
from maedet.export import ExportError, export_onnx
from maedet.export.cli import main
from maedet.export.validate import MAX_CALIB_PIXELS, check_opset, supported_opsets
from maedet.fileio import (
    atomic_output,
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_text,
    check_output_path,
    write_all_or_none,
)
from maedet.memory import available_memory_bytes, check_fits, forward_peak_bytes

pytestmark = pytest.mark.slow  # see make test-fast

# 250 bytes each: ASCII, and 4-byte UTF-8 characters (62 of them + ".onnx" = 253 bytes) whose cut must not split one.
LONG_NAMES = ["a" * 245 + ".onnx", "\U0001f600" * 62 + ".onnx", "é" * 120 + "x.json"]


@pytest.mark.parametrize("name", LONG_NAMES, ids=["ascii", "emoji", "accents"])
def test_every_writer_accepts_a_legal_long_name(name: str, tmp_path: Path) -> None:
    assert len(os.fsencode(name)) <= 255
    atomic_write_bytes(tmp_path / name, b"bytes")
    assert (tmp_path / name).read_bytes() == b"bytes"
    atomic_write_text(tmp_path / name, "text")
    assert (tmp_path / name).read_text() == "text"
    with atomic_output(tmp_path / name) as tmp:
        tmp.write_bytes(b"via a temp path")
    assert (tmp_path / name).read_bytes() == b"via a temp path"
    (tmp_path / name).unlink()
    write_all_or_none([(tmp_path / name, lambda p: p.write_bytes(b"all"))])
    assert (tmp_path / name).read_bytes() == b"all"
    (tmp_path / name).unlink()
    with atomic_output_dir(tmp_path / name) as staging:
        (staging / "config.json").write_text("{}")
    assert (tmp_path / name / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left beside it


def test_too_long_and_unwritable_outputs_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(MaeDetError, match="at most 255"):
        check_output_path(tmp_path / ("n" * 256))
    with pytest.raises(MaeDetError, match="cannot write"):
        check_output_path("/proc/maedet-test.onnx")  # refused even for root, where os.access says yes
    assert list(tmp_path.iterdir()) == []


def test_export_with_a_250_byte_name_works(tmp_path: Path) -> None:
    out = tmp_path / LONG_NAMES[0]
    export_onnx("maedet_s", out, input_size=(64, 64), check=False)
    assert onnx.load(str(out)).graph.output[0].name == "c2"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_opset_range_is_what_the_installed_exporter_writes(tmp_path: Path) -> None:
    low, high = supported_opsets()
    assert low <= 18 <= high
    with pytest.raises(ExportError, match=f"opset {high + 1} is outside"):
        check_opset(high + 1)
    # The top of the range really exports (and so did nothing past it: the TorchScript exporter refuses it).
    result = export_onnx("resnet18", tmp_path / "r.onnx", input_size=(64, 64), opset=high, check=False)
    assert onnx.load(str(result.path)).opset_import[0].version == high


@pytest.mark.parametrize("classes", [-1, 0])
def test_logits_need_at_least_one_class(classes: int, tmp_path: Path, capsys) -> None:
    code = main(["maedet_s", "--logits", "--num-classes", str(classes), "--onnx", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "--num-classes must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_out_indices_beyond_the_model_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="99"):
        export_onnx("maedet_s", tmp_path / "m.onnx", input_size=(64, 64), out_indices=(99,))


def _bomb_png(path: Path, side: int) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize("side", [20_000, 9_000])  # above Pillow's 2× bomb limit (its error), and just under it
def test_calibration_bombs_are_refused_unread(side: int, tmp_path: Path) -> None:
    assert side * side > MAX_CALIB_PIXELS
    calib = tmp_path / "calib"
    calib.mkdir()
    _bomb_png(calib / "bomb.png", side)
    with pytest.raises(ExportError, match="megapixels"):
        export_onnx("maedet_s", tmp_path / "m.onnx", input_size=(64, 64), precision="int8", calib=calib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_calibration_batches_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="between 1 and 1024"):
        export_onnx("maedet_s", tmp_path / "m.onnx", input_size=(64, 64), precision="int8", calib_batches=100_000)


class _Chain(nn.Module):
    """conv 3→8 (kept as the shortcut) → conv 8→8, added: the peak holds input, shortcut, and the new map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return y + self.b(y)


def test_peak_estimate_counts_what_is_alive_at_once() -> None:
    h = w = 64
    plane = h * w * 4  # bytes of one float32 channel
    # input (3) + y (8) + b(y) (8) + the sum (8) are alive together at the add.
    assert forward_peak_bytes(_Chain(), (1, 3, h, w)) == (3 + 8 + 8 + 8) * plane


_PEAK_PROBE = """
import json, torch
from maedet.bench.memory import PeakMemory
from maedet.export.model_source import resolve_model
from maedet.memory import forward_peak_bytes

torch.set_num_threads(1)
module = resolve_model("maedet_s").module
estimate = forward_peak_bytes(module, (1, 3, 1024, 1024))
x = torch.randn(1, 3, 1024, 1024)
with torch.no_grad():
    module(torch.randn(1, 3, 64, 64))  # first-run allocations (oneDNN primitives) out of the measurement
    with PeakMemory("cpu-rss-rise") as peak:
        module(x)
print(json.dumps({"estimate": estimate, "measured_mb": peak.megabytes}))
"""


def test_peak_estimate_matches_the_measured_memory_within_a_factor_of_two() -> None:
    """Against the real rise of peak resident memory during one forward at 1024×1024, in a fresh process (inside
    the test session, earlier tests leave the allocator and oneDNN caches in states that move the rise)."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["measured_mb"] is None:
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs)")
    measured, estimate = result["measured_mb"] * 2**20, result["estimate"]
    assert measured / 2 <= estimate <= measured * 2, (estimate / 2**20, result["measured_mb"])


def test_an_input_that_cannot_fit_is_refused_before_running(tmp_path: Path, capsys) -> None:
    room = available_memory_bytes()
    assert room is not None and room > 0
    code = main(["maedet_s", "--input-size", "8192", "8192", "--batch-size", "64", "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert "GiB of memory (estimated before running), but only" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MaeDetError, match=r"needs about 2.0 GiB .* only 1.0 GiB"):
        check_fits(2 * 2**30, "this", available=2**30)


def _odd_onnx(path: Path, props: dict[str, str]) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


@pytest.mark.parametrize(
    "props",
    [
        {"structure": "[" * 100_000 + "]" * 100_000, "maedet_version": "0"},
        {"structure": '{"blocks": 5}', "maedet_version": "0"},
        {"structure": json.dumps({"blocks": [1, None, "x"]}), "maedet_version": "0"},
    ],
    ids=["deep", "blocks-not-a-list", "blocks-not-dicts"],
)
def test_info_on_odd_metadata_is_one_sentence_or_a_table(props: dict[str, str], tmp_path: Path, capsys) -> None:
    path = tmp_path / "odd.onnx"
    _odd_onnx(path, props)
    code = main(["--info", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code in (0, 2)
    if code == 2:
        assert captured.err.startswith("maedet-export: error: ") and captured.err.count("\n") == 1


def test_ctrl_c_while_importing_exits_130_with_one_line(tmp_path: Path) -> None:
    tool = Path(sys.executable).parent / "maedet-export"
    if not tool.exists():
        pytest.skip("console scripts not installed")
    proc = subprocess.Popen(
        [str(tool), "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job starts with it ignored
    )
    time.sleep(0.4)  # well inside importing torch (which takes seconds), past the interpreter's own start
    assert proc.poll() is None, "the tool finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["maedet-export: interrupted while starting; nothing was written."]
