"""The Structure: the one contract between search (which finds backbones) and the zoo (which builds them).

A Structure is a stem plus a list of stages of bottleneck residual blocks, exactly the family of docs/design.md §2.
It is immutable and validated on construction, so every other part can trust it without checking again.
It reads the authors' files (a Python literal, parsed with ``ast.literal_eval``, never executed) and our own
JSON, and writes both.
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text

__all__ = [
    "FeaturePoint",
    "Stage",
    "Stem",
    "Structure",
    "StructureError",
    "builtin_structure",
    "feature_levels",
    "load_structure",
]

STEM_CLASS = "ConvKXBNRELU"
STAGE_CLASSES = ("SuperResK1KXK1", "SuperResConvK1KXK1")
_BUILTIN_DIR = Path(__file__).with_name("structures")
BUILTIN_NAMES = ("maedet_s", "maedet_m", "maedet_l", "r50_like_init")


# Bounds: far above every published or searched backbone, low enough that a typo cannot build a model that
# exhausts memory (issue 12.4) or a file exhaust the parser.
MAX_CHANNELS = 16384  # widest MAE-DET layer is 2400; ResNet-152's is 2048
MAX_DEPTH = 256  # blocks per stage (MAE-DET-L has 16 at most)
MAX_STAGES = 32  # stages after the stem (the published ones have 5)
MAX_KERNEL = 15  # the search space uses 3, 5, 7
MAX_IN_CHANS = 64  # image channels
MAX_FILE_BYTES = 1 << 20  # a structure file is ~2 kB; literal_eval needs ~500× the text in memory
MAX_NESTING = 8  # wrappers such as {'structure': {'best_structures': [[...]]}} before the block list


class StructureError(MaeDetError):
    """A structure that cannot be read or is not a buildable MAE-DET backbone (one sentence)."""


def _check_int(where: str, name: str, value: Any, minimum: int = 1, maximum: int = MAX_CHANNELS) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise StructureError(f"{where}: field '{name}' must be an integer, got {shown}.")
    if value < minimum:
        raise StructureError(f"{where}: field '{name}' must be at least {minimum}, got {value}.")
    if value > maximum:
        shown = str(value) if value.bit_length() < 64 else f"a {len(str(value))}-digit number"
        raise StructureError(f"{where}: field '{name}' must be at most {maximum} ({_LIMIT_REASON[name]}), got {shown}.")
    return value


_LIMIT_REASON = {
    "in": "the channel limit",
    "out": "the channel limit",
    "btn": "the channel limit",
    "L": "blocks per stage",
    "k": "the kernel size limit",
    "s": "stride",
}


def _check_kernel(where: str, value: Any) -> int:
    _check_int(where, "k", value, maximum=MAX_KERNEL)
    if value % 2 == 0:
        raise StructureError(f"{where}: field 'k' must be an odd kernel size, got {value}.")
    return value


def _check_stride(where: str, value: Any) -> int:
    _check_int(where, "s", value)
    if value not in (1, 2):
        raise StructureError(f"{where}: field 's' must be 1 or 2, got {value}.")
    return value


@dataclass(frozen=True)
class Stem:
    """k×k conv → BN → ReLU (the authors' ``ConvKXBNRELU``)."""

    in_chs: int
    out_chs: int
    stride: int
    kernel_size: int

    def __post_init__(self) -> None:
        where = f"block 0 ({STEM_CLASS})"
        if isinstance(self.in_chs, int) and not isinstance(self.in_chs, bool) and self.in_chs > MAX_IN_CHANS:
            raise StructureError(f"{where}: field 'in' (image channels) must be at most {MAX_IN_CHANS}.")
        _check_int(where, "in", self.in_chs)
        _check_int(where, "out", self.out_chs)
        _check_stride(where, self.stride)
        _check_kernel(where, self.kernel_size)

    def to_authors(self) -> dict[str, Any]:
        return {"class": STEM_CLASS, "in": self.in_chs, "out": self.out_chs, "s": self.stride, "k": self.kernel_size}


@dataclass(frozen=True)
class Stage:
    """``depth`` bottleneck residual blocks (the authors' ``SuperResK1KXK1``); only block 0 strides."""

    in_chs: int
    out_chs: int
    stride: int
    kernel_size: int
    depth: int
    bottleneck_chs: int
    index: int = field(default=1, compare=False, repr=False)  # position in the block list, for error messages

    def __post_init__(self) -> None:
        where = f"block {self.index} ({STAGE_CLASSES[0]})"
        _check_int(where, "in", self.in_chs)
        _check_int(where, "out", self.out_chs)
        _check_stride(where, self.stride)
        _check_kernel(where, self.kernel_size)
        _check_int(where, "L", self.depth, maximum=MAX_DEPTH)
        _check_int(where, "btn", self.bottleneck_chs)

    def to_authors(self) -> dict[str, Any]:
        return {
            "class": STAGE_CLASSES[0],
            "in": self.in_chs,
            "out": self.out_chs,
            "s": self.stride,
            "k": self.kernel_size,
            "L": self.depth,
            "btn": self.bottleneck_chs,
        }


@dataclass(frozen=True)
class FeaturePoint:
    """A detection feature (C2..C5): the output of block ``block_index`` (0 = stem, i = stages[i-1])."""

    name: str
    block_index: int
    num_chs: int
    reduction: int


@dataclass(frozen=True)
class Structure:
    """An immutable, validated backbone description: a stem and one or more stages."""

    stem: Stem
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.stem, Stem):
            raise StructureError("block 0: the first block must be a ConvKXBNRELU stem.")
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise StructureError("structure: it needs at least one SuperResK1KXK1 stage after the stem.")
        if len(stages) > MAX_STAGES:
            raise StructureError(f"structure: at most {MAX_STAGES} stages after the stem, got {len(stages)}.")
        prev_out = self.stem.out_chs
        for i, stage in enumerate(stages, start=1):
            if not isinstance(stage, Stage):
                raise StructureError(f"block {i}: every block after the stem must be a SuperResK1KXK1 stage.")
            if stage.in_chs != prev_out:
                raise StructureError(
                    f"block {i} ({STAGE_CLASSES[0]}): field 'in' is {stage.in_chs} but the previous block's "
                    f"'out' is {prev_out}."
                )
            prev_out = stage.out_chs

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_blocks(cls, blocks: Any) -> Structure:
        """Build from the authors' block list (dicts with 'class', 'in', 'out', 's', 'k', 'L', 'btn')."""
        if not isinstance(blocks, (list, tuple)):
            raise StructureError(f"structure: expected a list of blocks, got {type(blocks).__name__}.")
        if not blocks:
            raise StructureError("structure: the block list is empty.")
        if len(blocks) > MAX_STAGES + 1:
            raise StructureError(f"structure: at most {MAX_STAGES} stages after the stem, got {len(blocks) - 1}.")
        parsed_stem: Stem | None = None
        stages: list[Stage] = []
        for i, block in enumerate(blocks):
            if not isinstance(block, Mapping):
                raise StructureError(f"block {i}: expected a dict, got {type(block).__name__}.")
            cls_name = block.get("class")
            where = f"block {i} ({cls_name})"
            if i == 0:
                if cls_name != STEM_CLASS:
                    raise StructureError(
                        f"block 0: field 'class' must be '{STEM_CLASS}' for the stem, got {cls_name!r}."
                    )
                _require(where, block, ("in", "out", "s", "k"))
                parsed_stem = Stem(block["in"], block["out"], block["s"], block["k"])
            else:
                if cls_name not in STAGE_CLASSES:
                    raise StructureError(
                        f"block {i}: field 'class' must be one of {', '.join(STAGE_CLASSES)}, got {cls_name!r}."
                    )
                _require(where, block, ("in", "out", "s", "k", "L", "btn"))
                stages.append(
                    Stage(block["in"], block["out"], block["s"], block["k"], block["L"], block["btn"], index=i)
                )
        assert parsed_stem is not None
        return cls(parsed_stem, tuple(stages))

    @classmethod
    def from_dict(cls, data: Any) -> Structure:
        """Accept our JSON object, ``{'structure': [...]}``, ``{'best_structures': [[...]]}`` or a bare list.

        Wrappers are unwrapped in a bounded loop, so deeply nested input is an error sentence, not a RecursionError.
        """
        for _ in range(MAX_NESTING):
            if isinstance(data, Structure):
                return data
            if isinstance(data, (list, tuple)):
                if data and isinstance(data[0], (list, tuple)):  # the authors' list of structures: take the best
                    data = data[0]
                    continue
                return cls.from_blocks(data)
            if not isinstance(data, Mapping):
                raise StructureError(f"structure: expected a list of blocks or a dict, got {type(data).__name__}.")
            key = next((k for k in ("blocks", "structure", "best_structures") if k in data), None)
            if key is None:
                raise StructureError(
                    "structure: the dict has none of the keys 'blocks', 'structure' or 'best_structures'."
                )
            if key == "blocks":
                return cls.from_blocks(data["blocks"])
            data = data[key]
        raise StructureError(f"structure: nested more than {MAX_NESTING} levels deep before the block list.")

    @classmethod
    def from_text(cls, text: str) -> Structure:
        """Parse JSON, or the authors' Python-literal format (``ast.literal_eval``; never executed).

        The text is capped before either parser sees it; a UTF-8 byte-order mark is accepted.
        """
        if len(text) > MAX_FILE_BYTES:
            raise StructureError(f"structure: the text is {len(text)} characters; the limit is {MAX_FILE_BYTES}.")
        text = text.removeprefix("\ufeff")
        try:
            data = json.loads(text)
        except RecursionError:
            raise StructureError("structure: the JSON is nested too deeply.") from None
        except ValueError:  # JSONDecodeError, or an integer with more digits than Python converts
            literal = re.sub(r"^\s*[A-Za-z_]\w*\s*=\s*", "", text.strip(), count=1)
            try:
                data = ast.literal_eval(literal)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                reason = type(exc).__name__ if isinstance(exc, (MemoryError, RecursionError)) else exc
                raise StructureError(f"structure: the text is neither JSON nor a Python literal ({reason}).") from None
        return cls.from_dict(data)

    # ---------------------------------------------------------------- output
    def to_authors(self) -> list[dict[str, Any]]:
        """The authors' block list."""
        return [self.stem.to_authors(), *(s.to_authors() for s in self.stages)]

    def to_dict(self) -> dict[str, Any]:
        """Our JSON object (the format ``best.json`` and the hub's config.json use)."""
        return {"format": "maedet-structure/1", "blocks": self.to_authors()}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_authors_text(self) -> str:
        """The authors' ``best_structure.txt`` format: a Python literal that their ``ast.literal_eval`` reads."""
        blocks = ",\n".join(repr(b) for b in self.to_authors())
        return "{'space_arch': 'CnnNet', 'best_structures': [[\n" + blocks + "\n]]}\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON (or the authors' format for a ``.txt`` path) atomically."""
        path = Path(path)
        text = self.to_authors_text() if path.suffix == ".txt" else self.to_json() + "\n"
        atomic_write_text(path, text)

    # ---------------------------------------------------------------- derived facts
    @property
    def blocks(self) -> tuple[Stem | Stage, ...]:
        return (self.stem, *self.stages)

    @property
    def num_features(self) -> int:
        return self.stages[-1].out_chs

    def with_in_chans(self, in_chans: int) -> Structure:
        """The same backbone for a different number of input channels."""
        if in_chans == self.stem.in_chs:
            return self
        stem = Stem(in_chans, self.stem.out_chs, self.stem.stride, self.stem.kernel_size)
        return Structure(stem, self.stages)

    def feature_points(self, min_reduction: int = 4) -> tuple[FeaturePoint, ...]:
        """C2..C5: the last block before each stride-2 block, and the final block (docs/design.md §2)."""
        blocks = self.blocks
        levels = feature_levels([block.stride for block in blocks], min_reduction)
        return tuple(FeaturePoint(name, i, blocks[i].out_chs, reduction) for name, i, reduction in levels)


def feature_levels(strides: Sequence[int], min_reduction: int = 4) -> list[tuple[str, int, int]]:
    """(name, block index, reduction) of each detection feature, from the blocks' strides alone (stem first).

    A feature is the output of the last block before a stride-2 block, or of the final block, once the
    reduction reaches ``min_reduction``; it is named ``c{log2(reduction)}``. The search applies the same rule to
    genomes, which carry strides but no Structure.
    """
    levels: list[tuple[str, int, int]] = []
    reduction = 1
    for i, stride in enumerate(strides):
        reduction *= stride
        is_last = i == len(strides) - 1
        if (is_last or strides[i + 1] == 2) and reduction >= min_reduction:
            levels.append((f"c{reduction.bit_length() - 1}", i, reduction))
    return levels


def _require(where: str, block: Mapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        if key not in block:
            raise StructureError(f"{where}: field '{key}' is missing.")


def builtin_structure(name: str) -> Structure:
    """A published structure shipped with the package: maedet_s, maedet_m, maedet_l or r50_like_init."""
    key = name.replace("-", "_").lower()
    if key not in BUILTIN_NAMES:
        raise StructureError(f"unknown built-in structure {name!r}; choose one of {', '.join(BUILTIN_NAMES)}.")
    return Structure.from_text((_BUILTIN_DIR / f"{key}.json").read_text())


def load_structure(source: Structure | Mapping[str, Any] | Sequence[Any] | str | os.PathLike[str]) -> Structure:
    """A Structure from a Structure, a dict or list, a built-in name, or a path to JSON / the authors' txt."""
    if isinstance(source, Structure):
        return source
    if isinstance(source, (Mapping, list, tuple)):
        return Structure.from_dict(source)
    if isinstance(source, str) and source.replace("-", "_").lower() in BUILTIN_NAMES:
        return builtin_structure(source)
    if not isinstance(source, (str, os.PathLike)):
        raise StructureError(
            f"structure: expected a Structure, a dict, a list, a built-in name or a path, got {type(source).__name__}."
        )
    path = Path(source)
    text = _read_capped(path)
    try:
        return Structure.from_text(text)
    except ValueError as exc:
        raise StructureError(f"{path.name}: {exc}") from None


def _read_capped(path: Path) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES: stat first, so a FIFO or device is never opened."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise StructureError(f"cannot read structure file {str(path)!r}: not a regular file.")
        if info.st_size > MAX_FILE_BYTES:
            raise StructureError(
                f"cannot read structure file {str(path)!r}: {info.st_size} bytes; the limit is {MAX_FILE_BYTES}."
            )
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:  # it grew since the stat
            raise StructureError(f"cannot read structure file {str(path)!r}: larger than {MAX_FILE_BYTES} bytes.")
        return data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise StructureError(f"cannot read structure file {str(path)!r}: {reason}.") from None
