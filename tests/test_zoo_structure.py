"""The Structure contract: parsing (ours and the authors' formats), validation and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maedet.zoo import Stage, Stem, Structure, builtin_structure, load_structure

REFERENCE = Path(__file__).parent.parent / "zoo" / "structures"

# The published backbones as the paper's authors released them (docs/design.md §2), written out here by hand so the
# built-ins are checked against the publication, not against the files they are read from:
# stem (in, out, stride, kernel); stages (in, out, stride, kernel, depth, bottleneck).
PUBLISHED = {
    "maedet_s": (
        (3, 32, 2, 3),
        [(32, 48, 2, 5, 2, 32), (48, 272, 2, 3, 4, 120), (272, 1024, 2, 5, 10, 80), (1024, 2048, 2, 3, 10, 240)],
    ),
    "maedet_m": (
        (3, 64, 2, 3),
        [(64, 120, 2, 3, 2, 64), (120, 512, 2, 5, 10, 72), (512, 1632, 2, 5, 10, 112), (1632, 2048, 2, 5, 8, 184)],
    ),
    "maedet_l": (
        (3, 80, 2, 3),
        [(80, 144, 2, 3, 2, 80), (144, 608, 2, 5, 12, 88), (608, 1912, 2, 5, 12, 136), (1912, 2400, 2, 5, 10, 220)],
    ),
    "r50_like_init": (
        (3, 32, 2, 3),
        [
            (32, 256, 2, 3, 1, 64),
            (256, 512, 2, 3, 1, 128),
            (512, 768, 2, 3, 1, 256),
            (768, 1024, 1, 3, 1, 256),
            (1024, 2048, 2, 3, 1, 512),
        ],
    ),
}


def authors_blocks(name: str) -> list[dict]:
    return json.loads((REFERENCE / f"{name}.json").read_text())["structure"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_builtin_is_the_published_structure(name: str) -> None:
    stem, stages = PUBLISHED[name]
    expected = Structure(Stem(*stem), tuple(Stage(*stage) for stage in stages))
    structure = builtin_structure(name)
    assert structure == expected
    assert Structure.from_text(structure.to_json()) == structure
    assert Structure.from_text(structure.to_authors_text()) == structure
    assert load_structure(REFERENCE / f"{name}.json") == expected  # the authors' file format, read as data


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
