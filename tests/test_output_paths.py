"""No tool may write over a file it reads (issue 17.1): the same path, a symbolic link or a hard link to an input,
an existing file inside an input folder, or an output folder that holds an input, is refused in one sentence."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from maedet.errors import MaeDetError
from maedet.fileio import refuse_overwriting_inputs


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "w.pth"
    path.write_bytes(b"the user's only copy")
    return path


def test_the_same_path_is_refused(source: Path) -> None:
    with pytest.raises(MaeDetError, match="would destroy the input"):
        refuse_overwriting_inputs({"--checkpoint": source}, {"ONNX file": source})


def test_another_spelling_of_the_same_path_is_refused(source: Path) -> None:
    spelled = source.parent / "." / ".." / source.parent.name / source.name
    with pytest.raises(MaeDetError, match="--checkpoint"):
        refuse_overwriting_inputs({"--checkpoint": source}, {"ONNX file": spelled})


def test_a_hard_link_to_the_input_is_refused(source: Path) -> None:
    link = source.parent / "hard.onnx"
    os.link(source, link)
    with pytest.raises(MaeDetError, match="would destroy the input"):
        refuse_overwriting_inputs({"--checkpoint": source}, {"ONNX file": link})


def test_a_symbolic_link_either_way_is_refused(source: Path) -> None:
    link = source.parent / "soft.pth"
    link.symlink_to(source)
    with pytest.raises(MaeDetError):
        refuse_overwriting_inputs({"--checkpoint": source}, {"ONNX file": link})
    with pytest.raises(MaeDetError):
        refuse_overwriting_inputs({"--checkpoint": link}, {"ONNX file": source})


def test_an_existing_file_in_an_input_folder_is_refused_a_new_one_is_not(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")
    with pytest.raises(MaeDetError, match="--calib folder"):
        refuse_overwriting_inputs({"--calib folder": images}, {"ONNX file": images / "a.png"})
    refuse_overwriting_inputs({"--calib folder": images}, {"ONNX file": images / "new.onnx"})


def test_an_output_folder_holding_an_input_is_refused(source: Path) -> None:
    with pytest.raises(MaeDetError, match="holds the checkpoint"):
        refuse_overwriting_inputs({"checkpoint": source}, output_folders={"output folder": source.parent})


def test_distinct_and_missing_paths_pass(source: Path) -> None:
    refuse_overwriting_inputs({"--checkpoint": source, "--structure": None}, {"ONNX file": source.parent / "m.onnx"})
    refuse_overwriting_inputs({"--structure": source.parent / "missing.json"}, {"x": source.parent / "missing.json"})


# ----------------------------------------------------------------------------- every tool, before any work
def _refused(capsys: pytest.CaptureFixture[str], code: int, *kept: tuple[Path, str]) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "would destroy" in err, err
    for path, digest in kept:
        assert _digest(path) == digest
    return err


def test_export_refuses_its_checkpoint_and_structure_as_outputs(source: Path, capsys) -> None:
    from maedet.export.cli import main

    digest = _digest(source)
    code = main(["maedet_s", "--checkpoint", str(source), "--onnx", str(source)])
    _refused(capsys, code, (source, digest))
    hard = source.parent / "linked.onnx"
    os.link(source, hard)
    code = main(["maedet", "--structure", str(source), "--onnx", str(hard)])
    _refused(capsys, code, (source, digest))


def test_detector_export_refuses_its_checkpoint_as_output(source: Path, capsys) -> None:
    from maedet.export.cli import main

    digest = _digest(source)
    _refused(capsys, main(["maedet_s_gfl", "--checkpoint", str(source), "--onnx", str(source)]), (source, digest))


def test_eval_refuses_its_annotations_as_json(tmp_path: Path, capsys) -> None:
    from maedet.detect.cli import eval_main

    ann = tmp_path / "ann.json"
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    digest = _digest(ann)
    argv = ["--ann", str(ann), "--images", str(tmp_path), "--model", "maedet_s_gfl", "--json", str(ann)]
    _refused(capsys, eval_main(argv), (ann, digest))


def test_detect_refuses_an_output_folder_that_holds_its_images(tmp_path: Path, capsys) -> None:
    from maedet.detect.cli import detect_main

    image = tmp_path / "photos" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"not really a png")
    digest = _digest(image)
    code = detect_main([str(image), "--model", "maedet_s_gfl", "--out", str(image.parent)])
    _refused(capsys, code, (image, digest))


def test_convert_refuses_an_output_folder_that_holds_the_checkpoint(source: Path, capsys) -> None:
    from maedet.zoo.convert import main

    digest = _digest(source)
    _refused(capsys, main([str(source), "--model", "maedet_s", "--out", str(source.parent)]), (source, digest))


def test_search_refuses_its_init_structure_as_an_output(tmp_path: Path, capsys) -> None:
    from maedet.search.cli import main

    init = tmp_path / "best.json"
    init.write_text((Path(__file__).resolve().parents[1] / "zoo" / "structures" / "maedet_s.json").read_text())
    digest = _digest(init)
    code = main(["run", "--iterations", "10", "--init", str(init), "--out", str(tmp_path)])
    _refused(capsys, code, (init, digest))


def test_bench_refuses_its_structure_as_the_json_output(source: Path, capsys) -> None:
    from maedet.bench.cli import main

    digest = _digest(source)
    code = main(["--structure", f"mine={source}", "--backends", "torch-eager", "--json", str(source)])
    _refused(capsys, code, (source, digest))
