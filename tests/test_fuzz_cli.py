"""A fixed set of hostile and careless inputs against every command line tool, each a real subprocess (issue 12).

Every probe must end the same way: exit code 2, exactly one line on stderr that starts with
``<tool>: error:``, no traceback anywhere, nothing new or changed in its output folder, and nothing outside it
touched (a sentinel file beside it, and the target of a symbolic link planted inside it, keep their bytes and
times). Each probe runs under an address-space limit (``RLIMIT_AS``) and a timeout, so a probe that makes a tool
allocate without bound or hang fails here instead of taking the machine down. Probes that need a model must fail
validation before one is built, which keeps the whole module to about a minute: the probes run side by side, and
what each costs is mostly importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# slow: left out of make test-fast; the timeout: the first test waits for every probe (the module fixture runs them all)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ADDRESS_SPACE_LIMIT = 6 * 2**30  # torch + onnxruntime map ~2-3 GB of address space before doing anything
TIMEOUT_S = 180
BIN = Path(sys.executable).parent
STRUCTURES = Path(__file__).resolve().parents[1] / "zoo" / "structures"


# ---------------------------------------------------------------------------------------------- hostile inputs
def _nested_json(folder: Path) -> None:
    (folder / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "nested_dict.json").write_text('{"structure": ' * 50_000 + "[]" + "}" * 50_000)


def _huge_channels(folder: Path) -> None:
    data = json.loads((STRUCTURES / "maedet_s.json").read_text())
    blocks = data.get("blocks") or data["structure"]
    blocks[0]["out"] = "HUGE"
    text = json.dumps({"blocks": blocks}).replace('"HUGE"', "1" + "0" * 400)
    (folder / "huge.json").write_text(text)


def _deep_model(folder: Path) -> None:
    data = json.loads((STRUCTURES / "maedet_s.json").read_text())
    blocks = data.get("blocks") or data["structure"]
    blocks[1]["L"] = 10_000_000
    (folder / "deep.json").write_text(json.dumps({"blocks": blocks}))


def _checkpoints(folder: Path) -> None:
    import pickle

    import torch

    torch.save({"state_dict": {1: torch.zeros(2), "a.weight": torch.zeros(2)}}, folder / "int_keys.pth")
    torch.save({"state_dict": {"a.weight": torch.empty(3, device="meta")}}, folder / "meta.pth")
    torch.save({"a.weight": torch.eye(3).to_sparse()}, folder / "sparse.pth")
    torch.save([torch.zeros(1)], folder / "list.pth")
    (folder / "garbage.pth").write_bytes(b"\x80\x04 not a pickle at all")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"state_dict": Payload()}, folder / "evil.pth")  # torch's zip format, as a real file would be
    (folder / "evil_legacy.pth").write_bytes(pickle.dumps({"state_dict": Payload()}))  # a bare pickle
    raw = pickle.dumps({"a": 123456789, "b": [1.5, 70000]}, protocol=2)
    (folder / "truncated.pth").write_bytes(raw[: raw.index(b"J") + 3])  # cut inside a 4-byte integer
    _protocol_0_zip(folder / "evil.pth", folder / "protocol0.pth")


def _protocol_0_zip(source: Path, target: Path) -> None:
    """torch's zip format whose data.pkl is a protocol-0 pickle (torch's own scan reads protocol 2 and up)."""
    import pickle
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, pickle.dumps({"x": 1}, protocol=0) if info.filename.endswith("data.pkl") else data)


def _coco_files(folder: Path) -> None:
    good = {
        "images": [{"id": 1, "file_name": "tiny.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (folder / "ann_ok.json").write_text(json.dumps(good))
    variants = {
        "ann_no_bbox.json": lambda d: d["annotations"][0].pop("bbox"),
        "ann_no_file_name.json": lambda d: d["images"][0].pop("file_name"),
        "ann_crowd_yes.json": lambda d: d["annotations"][0].update(iscrowd="yes"),
        "ann_mixed_ids.json": lambda d: d["images"].append({"id": "2", "file_name": "tiny.png"}),
    }
    for name, change in variants.items():
        data = json.loads(json.dumps(good))
        change(data)
        (folder / name).write_text(json.dumps(data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width``×``height`` greyscale pixels (the data would inflate to gigabytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # the first rows; enough for any header reader
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _calibration(folder: Path) -> None:
    bomb = folder / "calib_bomb"
    bomb.mkdir()
    (bomb / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    plain = folder / "calib"
    plain.mkdir()
    (plain / "tiny.png").write_bytes(_png_header(8, 8))


def _onnx_files(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def model(props: dict[str, str]) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        proto = helper.make_model(graph)
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
        return proto

    onnx.save(model({}), str(folder / "foreign.onnx"))
    onnx.save(model({"producer": "someone else", "note": "not ours"}), str(folder / "foreign_meta.onnx"))
    odd = {
        "structure": "[" * 100_000 + "]" * 100_000,
        "model_name": '{"blocks": 5}',
        "input_size": "[[[[[[[[[[1]]]]]]]]]]",
    }
    onnx.save(model(odd), str(folder / "nested_meta.onnx"))
    onnx.save(model({"structure": '{"blocks": 5}', "output_names": "7"}), str(folder / "odd_meta.onnx"))
    detector = {"task": "detection", "outputs": "detections", "num_classes": "eighty", "mean": "[0.5]"}
    onnx.save(model(detector), str(folder / "hand_made_detector.onnx"))


def _special_files(folder: Path) -> None:
    os.mkfifo(folder / "fifo.json")
    (folder / "a_file").write_text("I am a file, not a folder\n")
    (folder / "not_a_table.json").write_text('{"format": "something else"}')
    (folder / "bom.json").write_bytes(b"\xef\xbb\xbf" + (STRUCTURES / "maedet_s.json").read_bytes())
    (folder / "empty_folder").mkdir()


def _same_files(folder: Path) -> None:
    """An input beside a hard link and a symbolic link to it, as outputs that would overwrite it (issue 17.1)."""
    import torch

    torch.save({"x": torch.zeros(1)}, folder / "w.pth")
    os.link(folder / "w.pth", folder / "w_hard.onnx")
    (folder / "bom_link.onnx").symlink_to(folder / "bom.json")
    (folder / "best.json").write_bytes((STRUCTURES / "maedet_s.json").read_bytes())
    ann = {"images": [{"id": 1, "file_name": "tiny.png", "width": 8, "height": 8}], "annotations": []}
    (folder / "ann.json").write_text(json.dumps({**ann, "categories": [{"id": 1, "name": "x"}]}))


def _user_weights(folder: Path) -> None:
    """Checkpoints without tensors, with a NaN, and a folder whose config sets timm's checkpoint_path."""
    import torch
    from safetensors.torch import save_file

    for name, content in (("epoch", {"epoch": 3}), ("empty", {}), ("empty_sd", {"state_dict": {}})):
        torch.save(content, folder / f"{name}.pth")
    save_file({}, str(folder / "empty.safetensors"))
    torch.save({"state_dict": {"stem.conv.weight": torch.full((2, 2), float("nan"))}}, folder / "nan.pth")
    hostile = folder / "hostile_folder"
    hostile.mkdir()
    save_file({"stem.conv.weight": torch.zeros(1)}, str(hostile / "model.safetensors"))
    config = {"architecture": "maedet_s", "pretrained_cfg": {}, "model_args": {"checkpoint_path": "/etc/passwd"}}
    (hostile / "config.json").write_text(json.dumps(config))


# ---- issue 17: memory, images, devices, nested JSON, table fields (made once, written into every probe's folder)
_MADE_ONCE: dict[str, dict[str, bytes]] = {}
_MADE_LOCK = threading.Lock()


def _once(key: str, make: Callable[[], dict[str, bytes]]) -> dict[str, bytes]:
    with _MADE_LOCK:
        if key not in _MADE_ONCE:
            _MADE_ONCE[key] = make()
        return _MADE_ONCE[key]


def _tiny_detector_files() -> dict[str, bytes]:
    """A converted detector folder of ~0.6 MB: a 5-level MAE-DET structure 8 to 32 channels wide, FPN 32, 1 class."""
    import tempfile

    import maedet
    from maedet.zoo.detector_folder import save_detector_folder

    widths = [8, 16, 32, 32, 32]
    blocks = [{"class": "ConvKXBNRELU", "in": 3, "out": widths[0], "s": 2, "k": 3}]
    blocks += [
        {"class": "SuperResK1KXK1", "in": widths[i], "out": widths[i + 1], "btn": 8, "s": 2, "k": 3, "L": 1}
        for i in range(4)
    ]
    detector = maedet.create_detector("gfl", structure={"blocks": blocks}, num_classes=1, fpn_channels=32)
    with tempfile.TemporaryDirectory() as folder:
        save_detector_folder(detector, folder)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def _zip_bomb_checkpoint() -> dict[str, bytes]:
    """A torch zip checkpoint of ~70 kB whose one deflated entry declares 64 MiB (torch reads entries whole)."""
    import io
    import zipfile

    import torch

    plain = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, plain)
    with zipfile.ZipFile(plain) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as out:
        for name, data in entries.items():
            out.writestr(name, data)
        out.writestr("archive/data/1", bytes(64 * 2**20), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return {"zipbomb.pth": bomb.getvalue()}


def _detector_folders(folder: Path) -> None:
    files = _once("detector", _tiny_detector_files)
    config = json.loads(files["config.json"])
    variants = {
        "det": config,
        "det_wide": config | {"fpn_channels": 2**20},
        "det_bins": config | {"reg_max": 10**9},
        "det_nms": config | {"postprocess": config["postprocess"] | {"nms_pre": 10**9}},
        "det_nested": None,
    }
    for name, variant in variants.items():
        (folder / name).mkdir()
        for file, data in files.items():
            (folder / name / file).write_bytes(data)
        text = json.dumps(variant) if variant is not None else '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"
        (folder / name / "config.json").write_text(text)
    (folder / "zipbomb.pth").write_bytes(_once("zipbomb", _zip_bomb_checkpoint)["zipbomb.pth"])


def _images(folder: Path) -> None:
    (folder / "small.png").write_bytes(_png_header(64, 48))
    (folder / "big12000.png").write_bytes(_png_header(12_000, 12_000))


def _enormous_structure(folder: Path) -> None:
    blocks = [{"class": "ConvKXBNRELU", "in": 3, "out": 64, "s": 2, "k": 3}]
    blocks += [
        {
            "class": "SuperResK1KXK1",
            "in": 64 if i == 0 else 16384,
            "out": 16384,
            "btn": 16384,
            "s": 2,
            "k": 15,
            "L": 256,
        }
        for i in range(4)
    ]
    (folder / "enormous.json").write_text(json.dumps({"blocks": blocks}))


def _latency_tables(folder: Path) -> None:
    roles = {"stem": [1e-8] * 5, "pw": [1e-8] * 5}
    table = {"format": "maedet-latency-table/2", "target": {"batch": 1, "input_size": 224, "threads": 1},
             "features": ["macs", "in_elems", "out_elems", "weight_elems", "overhead"],
             "model": {"channel_block": 1, "roles": roles}}  # fmt: skip
    (folder / "table_samples.json").write_text(json.dumps(table | {"samples": 5}))
    (folder / "table_validation.json").write_text(json.dumps(table | {"validation": {"rmspe_pct": "5%"}}))
    text = json.dumps(table)
    (folder / "table_digits.json").write_text(text.replace('"batch": 1', '"batch": ' + "9" * 5000, 1))
    (folder / "table_inf.json").write_text(text.replace('"batch": 1', '"batch": 1e999', 1))


MAKERS: dict[str, Callable[[Path], None]] = {
    "nested": _nested_json,
    "huge": _huge_channels,
    "deep": _deep_model,
    "ckpt": _checkpoints,
    "calib": _calibration,
    "onnx": _onnx_files,
    "special": _special_files,
    "coco": _coco_files,
    "same": _same_files,
    "weights": _user_weights,
    "detector": _detector_folders,
    "images": _images,
    "enormous": _enormous_structure,
    "tables": _latency_tables,
}


# ------------------------------------------------------------------------------------------------- the probes
@dataclass(frozen=True)
class Probe:
    """One hostile invocation; ``{in}`` is the folder of prepared inputs, ``{out}`` the (empty) output folder."""

    id: str
    tool: str
    argv: tuple[str, ...]
    expect: str = ""  # a fragment the one sentence must contain


def _p(pid: str, tool: str, argv: str, expect: str = "") -> Probe:
    return Probe(pid, tool, tuple(argv.split()), expect)


EXPORT = "maedet-export"
SEARCH = "maedet-search"
BENCH = "maedet-bench"
CONVERT = "maedet-convert"
DETECT = "maedet-detect"
EVAL = "maedet-eval"
DATA = "maedet-data"
NAME_256 = "n" * 251 + ".onnx"  # 256 bytes: one more than any Linux file system allows


NAME_256 = "n" * 251 + ".onnx"
NINES = (
    "9" * 5000
)  # past Python's 4300-digit integer conversion limit  # 256 bytes: one more than any Linux file system allows

PROBES = [
    # ---- export: outputs
    _p("export-onnx-is-dir", EXPORT, "maedet_s --onnx {out}", "is a directory"),
    _p("export-onnx-in-proc", EXPORT, "maedet_s --onnx /proc/maedet-fuzz.onnx", "cannot write"),
    _p("export-onnx-under-file", EXPORT, "maedet_s --onnx {in}/a_file/m.onnx", "a_file"),
    _p("export-onnx-name-256-bytes", EXPORT, f"maedet_s --onnx {{out}}/{NAME_256}", "at most 255"),
    _p("export-onnx-dev-null", EXPORT, "maedet_s --onnx /dev/null", "not a regular file"),
    _p("export-onnx-fifo", EXPORT, "maedet_s --onnx {in}/fifo.json", "not a regular file"),
    # ---- export: options
    _p("export-opset-25", EXPORT, "maedet_s --opset 25 --onnx {out}/m.onnx", "opset 25"),
    _p("export-opset-21", EXPORT, "maedet_s --opset 21 --onnx {out}/m.onnx", "opset 21"),
    _p("export-opset-negative", EXPORT, "maedet_s --opset -1 --onnx {out}/m.onnx", "opset -1"),
    _p("export-out-indices-99", EXPORT, "maedet_s --out-indices 99 --onnx {out}/m.onnx", "99"),
    _p("export-out-indices-negative", EXPORT, "resnet18 --out-indices -7 --onnx {out}/m.onnx", "-7"),
    _p("export-logits-classes-negative", EXPORT, "maedet_s --logits --num-classes -1 --onnx {out}/m.onnx", "-1"),
    _p("export-logits-classes-zero", EXPORT, "maedet_s --logits --num-classes 0 --onnx {out}/m.onnx", "pooled"),
    _p("export-detector-onnx-is-dir", EXPORT, "maedet_s_gfl --onnx {out}", "is a directory"),
    _p("export-detector-input-8192", EXPORT, "maedet_s_gfl --input-size 8192 8192 --onnx {out}/d.onnx", "GiB"),
    _p("export-detector-classes-zero", EXPORT, "maedet_s_gfl --num-classes 0 --onnx {out}/m.onnx", "at least 1"),
    _p("export-calib-batches-huge", EXPORT, "maedet_s --int8 --calib-batches 100000 --onnx {out}/m.onnx", "1024"),
    _p("export-calib-bomb", EXPORT, "maedet_s --int8 --calib {in}/calib_bomb --onnx {out}/m.onnx", "megapixels"),
    _p("export-calib-missing", EXPORT, "maedet_s --int8 --calib {in}/nope --onnx {out}/m.onnx", "calibration"),
    _p("export-input-8192", EXPORT, "maedet_s --input-size 8192 8192 --onnx {out}/m.onnx", "GiB"),
    _p("export-input-batch-huge", EXPORT, "resnet18 --batch-size 100000 --onnx {out}/m.onnx", "GiB"),
    _p("export-input-size-tiny", EXPORT, "maedet_s --input-size 16 33 --onnx {out}/m.onnx", "too small"),
    _p("export-unknown-model", EXPORT, "../../../etc/passwd --onnx {out}/m.onnx", "unknown model"),
    # ---- export: structures and checkpoints
    _p("export-structure-nested", EXPORT, "maedet --structure {in}/nested.json --onnx {out}/m.onnx", "nested"),
    _p("export-structure-nested-dict", EXPORT, "maedet --structure {in}/nested_dict.json --onnx {out}/m.onnx"),
    _p("export-structure-huge-channels", EXPORT, "maedet --structure {in}/huge.json --onnx {out}/m.onnx", "digit"),
    _p("export-structure-deep", EXPORT, "maedet --structure {in}/deep.json --onnx {out}/m.onnx", "at most"),
    _p("export-structure-dev-zero", EXPORT, "maedet --structure /dev/zero --onnx {out}/m.onnx", "regular file"),
    _p("export-structure-fifo", EXPORT, "maedet --structure {in}/fifo.json --onnx {out}/m.onnx", "regular file"),
    _p("export-ckpt-int-keys", EXPORT, "maedet_s --checkpoint {in}/int_keys.pth --onnx {out}/m.onnx", "keys"),
    _p("export-ckpt-meta", EXPORT, "maedet_s --checkpoint {in}/meta.pth --onnx {out}/m.onnx", "meta"),
    _p("export-ckpt-sparse", EXPORT, "maedet_s --checkpoint {in}/sparse.pth --onnx {out}/m.onnx", "sparse"),
    _p("export-ckpt-evil", EXPORT, "maedet_s --checkpoint {in}/evil.pth --onnx {out}/m.onnx", "posix.system"),
    _p(
        "export-ckpt-evil-bare-pickle",
        EXPORT,
        "maedet_s --checkpoint {in}/evil_legacy.pth --onnx {out}/m.onnx",
        "posix.system",
    ),
    _p("export-ckpt-garbage", EXPORT, "maedet_s --checkpoint {in}/garbage.pth --onnx {out}/m.onnx", "garbage"),
    _p("export-ckpt-dir", EXPORT, "maedet_s --checkpoint {in}/empty_folder --onnx {out}/m.onnx", "holds no weights"),
    _p("export-ckpt-dev-zero", EXPORT, "maedet_s --checkpoint /dev/zero --onnx {out}/m.onnx", "not a file"),
    # ---- every tool: an output that is (or links to) an input (issue 17.1)
    _p("export-onnx-is-checkpoint", EXPORT, "maedet_s --checkpoint {in}/w.pth --onnx {in}/w.pth", "destroy"),
    _p("export-onnx-hard-link-to-ckpt", EXPORT, "maedet_s --checkpoint {in}/w.pth --onnx {in}/w_hard.onnx", "destroy"),
    _p("export-onnx-symlink-to-structure", EXPORT, "maedet --structure {in}/bom.json --onnx {in}/bom_link.onnx"),
    _p("convert-out-holds-checkpoint", CONVERT, "{in}/w.pth --model maedet_s --out {in}", "destroy"),
    _p("eval-json-is-ann", EVAL, "--ann {in}/ann.json --images {in}/calib --model maedet_s_gfl --json {in}/ann.json"),
    _p("detect-out-holds-images", DETECT, "{in}/calib --model maedet_s_gfl --out {in}/calib", "destroy"),
    _p("search-run-out-holds-init", SEARCH, "run --iterations 10 --init {in}/best.json --out {in}", "destroy"),
    _p("bench-json-is-structure", BENCH, "--structure {in}/bom.json --backends torch-eager --json {in}/bom.json"),
    # ---- user weights: empty, non-finite, hostile folder config (issue 17.2-17.4)
    _p("export-ckpt-epoch-only", EXPORT, "maedet_s --checkpoint {in}/epoch.pth --onnx {out}/m.onnx", "no tensors"),
    _p("export-ckpt-empty", EXPORT, "maedet_s --checkpoint {in}/empty.pth --onnx {out}/m.onnx", "no tensors"),
    _p("export-ckpt-empty-sd", EXPORT, "resnet18 --checkpoint {in}/empty_sd.pth --onnx {out}/m.onnx", "no tensors"),
    _p("export-ckpt-empty-st", EXPORT, "maedet_s --checkpoint {in}/empty.safetensors --onnx {out}/m.onnx", "tensors"),
    _p("export-ckpt-nan", EXPORT, "maedet_s --checkpoint {in}/nan.pth --onnx {out}/m.onnx", "NaN"),
    _p("export-folder-checkpoint-path", EXPORT, "{in}/hostile_folder --onnx {out}/m.onnx", "checkpoint_path"),
    _p("convert-ckpt-nan", CONVERT, "{in}/nan.pth --model maedet_s --out {out}/c", "NaN"),
    _p("convert-ckpt-empty", CONVERT, "{in}/empty_sd.pth --model maedet_s --out {out}/c", "no tensors"),
    _p("detect-ckpt-nan", DETECT, "{in}/calib --model maedet_s_gfl --checkpoint {in}/nan.pth --out {out}/d", "NaN"),
    # ---- numbers out of range (issue 17.4)
    _p("eval-limit-zero", EVAL, "--ann {in}/ann.json --images {in}/calib --model maedet_s_gfl --limit 0", "--limit"),
    _p("search-score-resolution-negative", SEARCH, "score maedet_s --resolution -480", "--resolution"),
    _p("detect-size-one", DETECT, "{in}/calib --model maedet_s_gfl --test-scale 1 1 --out {out}/d", "--test-scale"),
    _p("bench-threads-zero", BENCH, "--models resnet18 --backends torch-eager --threads 0", "--threads"),
    # ---- export: --info
    _p("export-info-foreign", EXPORT, "--info {in}/foreign.onnx", "not written by maedet-export"),
    _p("export-info-foreign-keys", EXPORT, "--info {in}/foreign_meta.onnx", "not written by maedet-export"),
    _p("export-info-nested-meta", EXPORT, "--info {in}/nested_meta.onnx", "not written by maedet-export"),
    _p("export-info-odd-meta", EXPORT, "--info {in}/odd_meta.onnx", "not written by maedet-export"),
    _p("export-info-garbage", EXPORT, "--info {in}/garbage.pth", "not a readable ONNX"),
    _p("export-info-fifo", EXPORT, "--info {in}/fifo.json", "not a regular file"),
    # ---- search
    _p("search-score-nested", SEARCH, "score {in}/nested.json", "nested"),
    _p("search-score-huge", SEARCH, "score {in}/huge.json", "digit"),
    _p("search-score-dev-zero", SEARCH, "score /dev/zero", "regular file"),
    _p("search-score-fifo", SEARCH, "score {in}/fifo.json", "regular file"),
    _p("search-run-out-is-file", SEARCH, "run --iterations 10 --out {in}/a_file", "a_file"),
    _p("search-run-out-under-file", SEARCH, "run --iterations 10 --out {in}/a_file/x", "a_file"),
    _p("search-run-out-in-proc", SEARCH, "run --iterations 10 --out /proc/maedet-fuzz", "proc"),
    _p("search-run-budget-inf", SEARCH, "run --iterations 10 --budget-flops inf --out {out}", "finite"),
    _p("search-run-ratios-nan", SEARCH, "run --iterations 10 --ratios nan,1,1,1,1 --out {out}", "finite"),
    _p("search-run-top-k-negative", SEARCH, "run --iterations 10 --top-k -5 --out {out}", "-5"),
    _p(
        "search-run-mutations-huge",
        SEARCH,
        "run --iterations 10 --budget-params 1e7 --mutations 100000 --out {out}",
        "mutations",
    ),
    _p("search-run-init-nested", SEARCH, "run --iterations 10 --init {in}/nested.json --out {out}", "nested"),
    _p("search-run-latency-table-garbage", SEARCH, "run --latency-table {in}/garbage.pth --out {out}", "garbage"),
    # ---- bench
    _p("bench-models-nested", BENCH, "--models {in}/nested.json --backends torch-eager", "nested"),
    _p("bench-models-huge", BENCH, "--models {in}/huge.json --backends torch-eager", "digit"),
    _p("bench-models-unknown", BENCH, "--models no_such_model --backends torch-eager", "unknown model"),
    _p("bench-input-8192", BENCH, "--models resnet18 --backends torch-eager --input-size 8192", "GiB"),
    _p(
        "bench-batch-huge", BENCH, "--models resnet18 --backends torch-eager --input-size 64 --batch-size 100000", "GiB"
    ),
    _p(
        "bench-json-is-dir",
        BENCH,
        "--models resnet18 --backends torch-eager --input-size 64 --rounds 1 --warmup 1 --json {out}",
        "directory",
    ),
    _p(
        "bench-json-in-proc",
        BENCH,
        "--models resnet18 --backends torch-eager --input-size 64 --rounds 1 --warmup 1 --json /proc/x.json",
        "proc",
    ),
    _p("bench-plot-not-png", BENCH, "--models resnet18 --backends torch-eager --plot {out}/p.txt", ".png"),
    _p("bench-profile-info-garbage", BENCH, "profile --info {in}/not_a_table.json", "table"),
    # ---- convert
    _p("convert-int-keys", CONVERT, "{in}/int_keys.pth --model maedet_s --out {out}/c", "keys"),
    _p("convert-meta", CONVERT, "{in}/meta.pth --model maedet_s --out {out}/c", "meta"),
    _p("convert-sparse", CONVERT, "{in}/sparse.pth --model maedet_s --out {out}/c", "sparse"),
    _p("convert-list", CONVERT, "{in}/list.pth --model maedet_s --out {out}/c", "list"),
    _p("convert-evil", CONVERT, "{in}/evil.pth --model maedet_s --out {out}/c", "posix.system"),
    _p("convert-structure-nested", CONVERT, "{in}/int_keys.pth --structure {in}/nested.json --out {out}/c", "nested"),
    _p(
        "convert-model-and-structure",
        CONVERT,
        "{in}/int_keys.pth --model maedet_m --structure {in}/bom.json --out {out}/c",
        "conflicts",
    ),
    _p("convert-out-is-file", CONVERT, "{in}/int_keys.pth --model maedet_s --out {in}/a_file", "not a folder"),
    _p("convert-out-under-file", CONVERT, "{in}/int_keys.pth --model maedet_s --out {in}/a_file/c", "a_file"),
    _p("convert-ckpt-dev-zero", CONVERT, "/dev/zero --model maedet_s --out {out}/c", "not a file"),
    # ---- detect / eval
    _p("detect-onnx-garbage", DETECT, "{in}/calib --onnx {in}/garbage.pth --out {out}/d", "garbage"),
    _p("detect-out-is-file", DETECT, "{in}/calib --model maedet_s_gfl --out {in}/a_file", "a_file"),
    _p("eval-onnx-foreign", EVAL, "--onnx {in}/foreign.onnx --ann {in}/ann_ok.json --images {in}/calib", "detector"),
    # ---- issue 17: structure of COCO files, hand-made detector metadata, odd pickles
    _p("eval-ann-no-bbox", EVAL, "--ann {in}/ann_no_bbox.json --images {in}/calib --model maedet_s_gfl", "'bbox'"),
    _p("eval-ann-no-file-name", EVAL, "--ann {in}/ann_no_file_name.json --images {in}/calib", "'file_name'"),
    _p("eval-ann-crowd-yes", EVAL, "--ann {in}/ann_crowd_yes.json --images {in}/calib", "iscrowd 'yes'"),
    _p("eval-ann-mixed-ids", EVAL, "--ann {in}/ann_mixed_ids.json --images {in}/calib", "not an integer"),
    _p(
        "eval-onnx-hand-made-meta",
        EVAL,
        "--onnx {in}/hand_made_detector.onnx --ann {in}/ann_ok.json --images {in}/calib",
        "num_classes",
    ),
    _p(
        "detect-onnx-hand-made-meta",
        DETECT,
        "{in}/calib --onnx {in}/hand_made_detector.onnx --out {out}/d",
        "num_classes",
    ),
    _p("export-ckpt-protocol0-zip", EXPORT, "maedet_s --checkpoint {in}/protocol0.pth --onnx {out}/m.onnx", "refused"),
    _p("export-ckpt-truncated", EXPORT, "maedet_s --checkpoint {in}/truncated.pth --onnx {out}/m.onnx", "truncated"),
    _p("convert-ckpt-truncated", CONVERT, "{in}/truncated.pth --model maedet_s --out {out}/c", "truncated"),
    # ---- data: the synthetic set's output folder and sizes
    _p("data-no-command", DATA, "", "required"),
    _p("data-out-not-empty", DATA, "shapes --out {out} --train 2 --val 1", "not empty"),
    _p("data-out-is-file", DATA, "shapes --out {in}/a_file --train 2 --val 1", "not a folder"),
    _p("data-out-fifo", DATA, "shapes --out {in}/fifo.json --train 2 --val 1", "not a folder"),
    _p("data-out-in-proc", DATA, "shapes --out /proc/maedet-fuzz --train 2 --val 1", "/proc"),
    _p("data-out-name-256-bytes", DATA, f"shapes --out {{out}}/{'d' * 256} --train 2 --val 1", "too long"),
    _p("data-train-huge", DATA, "shapes --out {out}/d --train 100000000000 --val 1", "GiB"),
    _p("data-size-huge", DATA, "shapes --out {out}/d --train 2 --val 1 --size 100000", "--size"),
    _p("data-classes-path", DATA, "shapes --out {out}/d --train 2 --val 1 --classes ../../etc", "unknown class"),
    # ---- issue 17: memory (weights, buffers and post-processing counted before anything is built or run)
    _p(
        "detect-size-100000",
        DETECT,
        "{in}/small.png --checkpoint {in}/det --test-scale 100000 100000 --out {out}/d",
        "GiB",
    ),
    _p("detect-png-12000", DETECT, "{in}/big12000.png --checkpoint {in}/det --out {out}/d", "megapixels"),
    _p("detect-folder-fpn-2-20", DETECT, "{in}/small.png --checkpoint {in}/det_wide --out {out}/d", "of weights"),
    _p("detect-folder-reg-max-1e9", DETECT, "{in}/small.png --checkpoint {in}/det_bins --out {out}/d", "reg_max"),
    _p("detect-folder-nms-pre-1e9", DETECT, "{in}/small.png --checkpoint {in}/det_nms --out {out}/d", "nms_pre"),
    _p("export-nms-pre-1e9", EXPORT, "maedet_s_gfl --nms-pre 1000000000 --onnx {out}/d.onnx", "nms_pre"),
    _p("export-folder-fpn-2-20", EXPORT, "local-dir:{in}/det_wide --onnx {out}/d.onnx", "of weights"),
    _p("export-structure-enormous", EXPORT, "maedet --structure {in}/enormous.json --onnx {out}/m.onnx", "of weights"),
    _p("export-ckpt-zip-bomb", EXPORT, "maedet_s --checkpoint {in}/zipbomb.pth --onnx {out}/m.onnx", "bomb"),
    _p("convert-zip-bomb", CONVERT, "{in}/zipbomb.pth --model maedet_s --out {out}/c", "bomb"),
    _p(
        "bench-models-enormous",
        BENCH,
        "--models {in}/enormous.json --backends torch-eager --input-size 64",
        "of weights",
    ),
    _p(
        "bench-threads-100000", BENCH, "--models resnet18 --backends torch-eager --input-size 64 --threads 100000", "4×"
    ),
    _p(
        "search-forward-resolution-100000",
        SEARCH,
        "run --iterations 10 --budget-params 1e7 --score forward --forward-resolution 100000 --out {out}",
        "forward score",
    ),
    # ---- issue 17: zero-size resizes and decompression bombs in detection
    _p(
        "detect-size-zero",
        DETECT,
        "{in}/small.png --checkpoint {in}/det --test-scale 0 0 --out {out}/d",
        "must be positive",
    ),
    _p("detect-bomb", DETECT, "{in}/calib_bomb/bomb.png --checkpoint {in}/det --out {out}/d", "megapixels"),
    # ---- issue 17: one device parser
    _p("detect-device-cuda-99", DETECT, "{in}/small.png --checkpoint {in}/det --device cuda:99 --out {out}/d", "CUDA"),
    _p("detect-device-banana", DETECT, "{in}/small.png --checkpoint {in}/det --device banana --out {out}/d", "banana"),
    _p("detect-device-meta", DETECT, "{in}/small.png --checkpoint {in}/det --device meta --out {out}/d", "meta"),
    _p("search-device-banana", SEARCH, "run --iterations 10 --budget-params 1e7 --device banana --out {out}", "banana"),
    # ---- issue 17: deeply nested JSON
    _p("detect-folder-nested", DETECT, "{in}/small.png --model local-dir:{in}/det_nested --out {out}/d", "nested"),
    _p("eval-ann-nested", EVAL, "--ann {in}/nested.json --images {in}/calib --checkpoint {in}/det", "nested"),
    _p("bench-profile-info-nested", BENCH, "profile --info {in}/nested.json", "nested"),
    # ---- issue 17: 4300-digit integers, huge numbers and wrong-typed fields in tables and options
    _p("bench-profile-info-samples", BENCH, "profile --info {in}/table_samples.json", "'samples'"),
    _p("bench-profile-info-validation", BENCH, "profile --info {in}/table_validation.json", "validation figure"),
    _p("bench-profile-info-digits", BENCH, "profile --info {in}/table_digits.json", "at most 64"),
    _p("bench-profile-info-inf", BENCH, "profile --info {in}/table_inf.json", "too large"),
    _p(
        "search-latency-table-samples",
        SEARCH,
        "run --iterations 10 --latency-table {in}/table_samples.json --budget-latency 5 --out {out}",
        "'samples'",
    ),
    _p("bench-input-size-5000-digits", BENCH, f"--models resnet18 --backends torch-eager --input-size {NINES}", "far"),
    _p(
        "detect-size-5000-digits",
        DETECT,
        f"{{in}}/small.png --checkpoint {{in}}/det --test-scale {NINES} 8 --out {{out}}/d",
        "far beyond the 8192 pixels",
    ),
    _p(
        "search-ratios-inf",
        SEARCH,
        "run --iterations 10 --budget-params 1e7 --ratios 1,1,inf,1,1 --out {out}",
        "finite",
    ),
]


# ------------------------------------------------------------------------------------------------- machinery
@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    before: dict[str, tuple]
    after: dict[str, tuple]
    sentinel_before: tuple
    sentinel_after: tuple


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): kind, size, mtime and content hash or link target."""
    seen: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir",)
            elif path.is_file():
                seen[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                seen[rel] = ("special", st.st_mode)
    return seen


def _sentinel_state(path: Path) -> tuple:
    st = path.stat()
    return (path.read_bytes(), st.st_mtime_ns, st.st_size)


def _run_probe(probe: Probe, root: Path) -> Outcome:
    """Prepare a fresh folder for the probe, run the tool under the limits, and record what changed."""
    inputs, out = root / "in", root / "out"
    inputs.mkdir(parents=True)
    out.mkdir()
    for make in MAKERS.values():
        make(inputs)
    sentinel = root / "sentinel.txt"
    sentinel.write_text("must stay as it is\n")
    (out / "planted.lnk").symlink_to(sentinel)  # a link into the outside world, planted in the output folder
    argv = [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in probe.argv]
    before, sentinel_before = _snapshot(root), _sentinel_state(sentinel)
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    env["MAEDET_CACHE"] = str(root / "cache")  # never the user's cache; anything written there shows
    try:
        done = subprocess.run(
            [str(BIN / probe.tool), *argv],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            preexec_fn=_limit_resources,
            cwd=out,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = None, str(exc.stdout or ""), f"timed out after {TIMEOUT_S} s"
    return Outcome(code, stdout, stderr, before, _snapshot(root), sentinel_before, _sentinel_state(sentinel))


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run every selected probe once, several at a time (each is mostly waiting for torch to import)."""
    if not (BIN / EXPORT).exists():
        pytest.skip("the console scripts are not installed next to this Python (pip install -e .)")
    selected = {
        item.callspec.params["probe"].id
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("probe"), Probe)
    }
    chosen = [p for p in PROBES if p.id in selected]
    base = tmp_path_factory.mktemp("fuzz")
    workers = max(2, min(8, (os.cpu_count() or 2) * 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: (p.id, _run_probe(p, base / p.id)), chosen)
        return dict(results)


def _params() -> list:
    return [pytest.param(p, id=p.id) for p in PROBES]


@pytest.mark.parametrize("probe", _params())
def test_hostile_input_gets_one_sentence_and_touches_nothing(probe: Probe, outcomes: dict[str, Outcome]) -> None:
    result = outcomes[probe.id]
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2, f"exit {result.code}: {text[-2000:]}"
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"{probe.tool}: error: "), lines[0]
    assert probe.expect in lines[0], lines[0]
    assert result.after == result.before, "files were added, changed or removed"
    assert result.sentinel_after == result.sentinel_before


def test_probe_ids_are_unique_and_cover_every_tool() -> None:
    ids = [p.id for p in PROBES]
    assert len(set(ids)) == len(ids)
    assert {p.tool for p in PROBES} == {EXPORT, SEARCH, BENCH, CONVERT, DETECT, EVAL, DATA}
    assert all(shutil.which(p.tool, path=str(BIN)) for p in PROBES) or not (BIN / EXPORT).exists()
