"""Cost figures of a Structure: pure functions of the Structure and the input size, no module built.

* ``official_flops``: the authors' ``get_flops`` count (conv MACs + 2·C per BN + C per ReLU per output pixel;
  the shortcut projection counted as conv-BN-ReLU, the stride-2 avgpool as C per input pixel). Search budgets
  use it so that our budgets mean what the paper's mean; it equals the table of docs/design.md §2 exactly.
* ``gmacs``: conv + linear MACs in units of 1e9, the timm/fvcore convention (FlopCounterMode reports 2×MACs).
* ``param_count``: exactly ``sum(p.numel())`` of the built module.
* ``conv_layers``: 1 per stem + 3 per bottleneck block (the authors' layer budget).
* ``cost``: all four at once, as the search's reports print them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .structure import Structure

__all__ = ["Cost", "conv_layers", "cost", "gmacs", "macs", "official_flops", "param_count"]


def _out_size(size: int, kernel: int, stride: int) -> int:
    pad = (kernel - 1) // 2
    return (size + 2 * pad - kernel) // stride + 1


def _walk(structure: Structure, height: int, width: int) -> tuple[int, int]:
    """Return (conv MACs, official FLOPs) for one image."""
    conv_macs = 0
    extra = 0  # BN, ReLU and pool terms of the official count
    stem = structure.stem
    h, w = _out_size(height, stem.kernel_size, stem.stride), _out_size(width, stem.kernel_size, stem.stride)
    pixels = h * w
    conv_macs += pixels * stem.in_chs * stem.out_chs * stem.kernel_size**2
    extra += 3 * stem.out_chs * pixels  # BN (2·C) + ReLU (C)
    for stage in structure.stages:
        btn, k = stage.bottleneck_chs, stage.kernel_size
        for i in range(stage.depth):
            in_chs = stage.in_chs if i == 0 else stage.out_chs
            stride = stage.stride if i == 0 else 1
            in_pixels = h * w
            h, w = _out_size(h, k, stride), _out_size(w, k, stride)
            pixels = h * w
            conv_macs += in_pixels * in_chs * btn  # 1x1 reduce
            conv_macs += pixels * btn * btn * k * k  # kxk
            conv_macs += pixels * btn * stage.out_chs  # 1x1 expand
            extra += 3 * btn * in_pixels + 3 * btn * pixels + 2 * stage.out_chs * pixels
            if i == 0:
                # Shortcut projection: the official count treats it as conv-BN-ReLU (3·C), and charges the
                # stride-2 avgpool C per *input* pixel.
                conv_macs += pixels * in_chs * stage.out_chs
                extra += 3 * stage.out_chs * pixels
                if stride == 2:
                    extra += in_chs * in_pixels
            extra += stage.out_chs * pixels  # ReLU after the add
    return conv_macs, conv_macs + extra


def official_flops(structure: Structure, resolution: int | tuple[int, int] = 224) -> int:
    """The authors' FLOPs figure for one image (a MAC-like count, not 2×MACs)."""
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    return _walk(structure, height, width)[1]


def macs(structure: Structure, height: int = 224, width: int | None = None, num_classes: int = 0) -> int:
    """Conv + linear multiply-accumulates for one image (the classifier counted when ``num_classes`` > 0)."""
    width = height if width is None else width
    linear = structure.num_features * num_classes
    return _walk(structure, height, width)[0] + linear


def gmacs(structure: Structure, height: int = 224, width: int | None = None, num_classes: int = 0) -> float:
    """``macs`` in units of 1e9 (GMACs)."""
    return macs(structure, height, width, num_classes) / 1e9


def param_count(structure: Structure, num_classes: int = 0) -> int:
    """Exactly the number of parameters of the built model (BN weight and bias included; classifier optional)."""
    stem = structure.stem
    total = stem.in_chs * stem.out_chs * stem.kernel_size**2 + 2 * stem.out_chs
    for stage in structure.stages:
        btn, k, out = stage.bottleneck_chs, stage.kernel_size, stage.out_chs
        body = btn * btn * k * k + btn * out + 4 * btn + 2 * out
        total += stage.in_chs * btn + body  # block 0
        total += stage.in_chs * out + 2 * out  # block 0 projection shortcut
        total += (stage.depth - 1) * (out * btn + body)
    if num_classes > 0:
        total += structure.num_features * num_classes + num_classes
    return total


def conv_layers(structure: Structure) -> int:
    """The authors' layer count: 1 for the stem, 3 per bottleneck block (shortcut projections not counted)."""
    return 1 + 3 * sum(stage.depth for stage in structure.stages)


@dataclass(frozen=True)
class Cost:
    """The figures a report shows for one structure (keys of ``maedet-search score --json`` and best.json)."""

    flops: int  # official FLOPs at the resolution asked for
    gmacs: float  # conv + linear GMACs at 224 px, no classifier
    params: int  # parameters, no classifier
    layers: int  # the authors' conv layer count


def cost(structure: Structure, resolution: int = 480) -> Cost:
    """Official FLOPs at ``resolution``, GMACs at 224 px, params and conv layers of ``structure``."""
    return Cost(
        flops=official_flops(structure, resolution),
        gmacs=gmacs(structure, 224),
        params=param_count(structure),
        layers=conv_layers(structure),
    )
