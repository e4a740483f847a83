"""The Structure contract: parsing (ours and the authors' formats), validation and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maedet.zoo import Stage, Stem, Structure, builtin_structure, load_structure

REFERENCE = Path(__file__).parent.parent / "zoo" / "structures"


def authors_blocks(name: str) -> list[dict]:
    return json.loads((REFERENCE / f"{name}.json").read_text())["structure"]


@pytest.mark.parametrize("name", ["maedet_s", "maedet_m", "maedet_l", "r50_like_init"])
def test_builtin_matches_reference_blocks(name: str) -> None:
    structure = builtin_structure(name)
    assert structure.to_authors() == authors_blocks(name)
    assert Structure.from_text(structure.to_json()) == structure
    assert Structure.from_text(structure.to_authors_text()) == structure


def test_authors_txt_formats_and_old_class_name(tmp_path: Path) -> None:
    blocks = authors_blocks("maedet_s")
    old = [dict(b, **{"class": "SuperResConvK1KXK1"}) if i else b for i, b in enumerate(blocks)]
    literal = tmp_path / "best_structure.txt"
    literal.write_text(repr({"space_arch": "CnnNet", "best_structures": [old]}))
    bare = tmp_path / "bare.txt"
    bare.write_text(repr(blocks))
    assigned = tmp_path / "assigned.txt"
    assigned.write_text("best_structures = " + repr([blocks]))
    expected = builtin_structure("maedet_s")
    for path in (literal, bare, assigned):
        assert load_structure(path) == expected
    assert load_structure(str(literal)) == expected


def test_save_is_json_or_authors_text(tmp_path: Path) -> None:
    structure = builtin_structure("maedet_m")
    structure.save(tmp_path / "s.json")
    structure.save(tmp_path / "s.txt")
    assert json.loads((tmp_path / "s.json").read_text())["blocks"] == authors_blocks("maedet_m")
    assert "best_structures" in (tmp_path / "s.txt").read_text()
    assert load_structure(tmp_path / "s.json") == load_structure(tmp_path / "s.txt") == structure
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_literal_is_parsed_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.txt"
    evil.write_text(f"__import__('pathlib').Path({str(marker)!r}).write_text('x')")
    with pytest.raises(ValueError, match="neither JSON nor a Python literal"):
        load_structure(evil)
    assert not marker.exists()


def _mutated(index: int, **changes) -> list[dict]:
    blocks = authors_blocks("maedet_s")
    blocks[index] = dict(blocks[index], **changes)
    return blocks


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (_mutated(2, **{"class": "MobileBlock"}), r"block 2: field 'class'"),
        (_mutated(0, **{"class": "SuperResK1KXK1"}), r"block 0: field 'class'"),
        (_mutated(3, k=4), r"block 3 \(SuperResK1KXK1\): field 'k' must be an odd"),
        (_mutated(1, s=3), r"block 1 \(SuperResK1KXK1\): field 's' must be 1 or 2"),
        (_mutated(2, **{"in": 50}), r"block 2 \(SuperResK1KXK1\): field 'in' is 50"),
        (_mutated(4, L=0), r"block 4 \(SuperResK1KXK1\): field 'L' must be at least 1"),
        (_mutated(3, btn=-8), r"block 3 \(SuperResK1KXK1\): field 'btn' must be at least 1"),
        (_mutated(0, out=0), r"block 0 \(ConvKXBNRELU\): field 'out' must be at least 1"),
        (_mutated(2, out="272"), r"block 2 \(SuperResK1KXK1\): field 'out' must be an integer"),
        ([b for i, b in enumerate(authors_blocks("maedet_s")) if i != 4][:1], r"at least one SuperResK1KXK1"),
        ([{k: v for k, v in b.items() if k != "btn"} for b in authors_blocks("maedet_s")], r"field 'btn' is missing"),
        ({"space_arch": "CnnNet"}, r"none of the keys"),
        ("not a list", r"expected a list of blocks or a dict"),
        ([1, 2], r"block 0: expected a dict"),
    ],
)
def test_invalid_structures_name_block_and_field(blocks, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Structure.from_dict(blocks)


def test_unreadable_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read structure file"):
        load_structure(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": [{"class": "ConvKXBNRELU", "in": 3, "out": 8, "s": 2, "k": 2}]}')
    with pytest.raises(ValueError, match=r"bad.json: block 0 \(ConvKXBNRELU\): field 'k'"):
        load_structure(bad)


def test_immutable_and_feature_points() -> None:
    structure = builtin_structure("r50_like_init")
    with pytest.raises(AttributeError):
        structure.stem = Stem(3, 8, 2, 3)  # type: ignore[misc]
    points = structure.feature_points()
    assert [(p.name, p.block_index, p.num_chs, p.reduction) for p in points] == [
        ("c2", 1, 256, 4),
        ("c3", 2, 512, 8),
        ("c4", 4, 1024, 16),  # the stride-1 stage extends C4
        ("c5", 5, 2048, 32),
    ]
    small = Structure(Stem(3, 8, 2, 3), (Stage(8, 16, 2, 3, 1, 8), Stage(16, 16, 2, 5, 2, 8)))
    assert small.with_in_chans(1).stem.in_chs == 1
    assert [p.reduction for p in small.feature_points()] == [4, 8]
