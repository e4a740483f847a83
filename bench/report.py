"""Results out: a rich table, JSON, CSV and the Figure-1-style plot (latency vs GMACs, speedup bars).

Every output says what its numbers are: latencies are this machine's (the machine line is printed with them),
speedups are ratios measured side by side in the same run, published figures are marked as published.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from maedet.fileio import atomic_write_bytes, atomic_write_text

from .errors import BenchError
from .machine import machine_line
from .memory import MEMORY_KINDS
from .models import display_name, is_reference
from .published import PUBLISHED_HEADLINE, PUBLISHED_SOURCE
from .reliability import RULE
from .results import BenchResult, BenchRow

__all__ = [
    "CSV_COLUMNS",
    "csv_rows",
    "csv_text",
    "json_text",
    "plot_figure",
    "plot_png",
    "render_table",
    "write_csv",
    "write_json",
    "write_plot",
]

CSV_COLUMNS = (
    "model",
    "backend",
    "precision",
    "device",
    "batch",
    "input",
    "params",
    "gmacs",
    "latency_median_ms",
    "latency_p90_ms",
    "latency_spread_pct",
    "samples",
    "throughput",
    "speedup_resnet50",
    "speedup_resnet101",
    "peak_memory_mb",
    "memory_kind",
    "published_coco_ap",
    "published_params_m",
    "published_gflops",
    "reliable",
    "unreliable_reason",
)


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create folder {str(path.parent)!r} for {str(path)!r}: {exc.strerror}.") from None


def json_text(result: BenchResult) -> str:
    """One object: ``machine``, ``config``, ``results`` (rows), ``skipped``, ``memory_kinds`` (strict JSON)."""
    return json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"


def write_json(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """:func:`json_text`, written atomically."""
    path = Path(path)
    _check_parent(path)
    atomic_write_text(path, json_text(result))
    return path


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}" if digits else str(value)


def csv_rows(result: BenchResult) -> list[dict[str, Any]]:
    out = []
    for r in result.results:
        pub = r.published or {}
        out.append(
            {
                "model": r.model,
                "backend": r.backend,
                "precision": r.precision,
                "device": r.device,
                "batch": r.batch,
                "input": f"{r.input[0]}x{r.input[1]}",
                "params": r.params,
                "gmacs": round(r.gmacs, 4),
                "latency_median_ms": round(r.latency.median, 3),
                "latency_p90_ms": round(r.latency.p90, 3),
                "latency_spread_pct": round(r.latency.spread_pct, 2),
                "samples": r.latency.samples,
                "throughput": round(r.throughput, 3),
                "speedup_resnet50": "" if r.speedup.get("resnet50") is None else round(r.speedup["resnet50"], 4),
                "speedup_resnet101": "" if r.speedup.get("resnet101") is None else round(r.speedup["resnet101"], 4),
                "peak_memory_mb": "" if r.peak_memory_mb is None else round(r.peak_memory_mb, 1),
                "memory_kind": r.memory_kind,
                "published_coco_ap": pub.get("coco_ap", ""),
                "published_params_m": pub.get("params_m", ""),
                "published_gflops": pub.get("gflops", ""),
                "reliable": "yes" if r.reliable else "no",
                "unreliable_reason": r.unreliable_reason or "",
            }
        )
    return out


def csv_text(result: BenchResult) -> str:
    """One line per row, columns CSV_COLUMNS (published_* empty unless --paper)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(result))
    return buffer.getvalue()


def write_csv(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """:func:`csv_text`, written atomically."""
    path = Path(path)
    _check_parent(path)
    atomic_write_text(path, csv_text(result))
    return path


UNRELIABLE_MARK = "*"
UNRELIABLE_HATCH = "//"
_UNRELIABLE_POINT: dict[str, Any] = dict(marker="x", s=120, color="black", linewidths=1.5, zorder=5)


def _speedup_text(value: float | None, reliable: bool = True) -> str:
    if value is None:
        return "–"
    colour = "green" if value > 1.0 else "red" if value < 1.0 else ""
    text = f"{value:.2f}×"
    if not reliable:
        return f"[yellow]{text}{UNRELIABLE_MARK}[/]"
    return f"[{colour}]{text}[/]" if colour else text


_TABLE_COLUMNS = (
    ("model", "left"),
    ("backend", "left"),
    ("input", "right"),
    ("params (M)", "right"),
    ("GMACs", "right"),
    ("median ms", "right"),
    ("p90 ms", "right"),
    ("spread", "right"),
    ("runs", "right"),
    ("img/s", "right"),
    ("mem MB", "right"),
    ("vs R50", "right"),
    ("vs R101", "right"),
)


def _table_cells(r: BenchRow, paper: bool) -> list[str]:
    from rich.markup import escape

    name = escape(display_name(r.model))
    name = f"[bold]{name}[/]" if is_reference(r.model) else name
    cells = [
        name if r.reliable else f"{name} [yellow]{UNRELIABLE_MARK}[/]",
        r.backend,
        f"{r.batch}×{r.input[0]}×{r.input[1]}",
        f"{r.params / 1e6:.1f}",
        f"{r.gmacs:.1f}",
        f"{r.latency.median:.1f}",
        f"{r.latency.p90:.1f}",
        f"{r.latency.spread_pct:.0f}%",
        str(r.latency.samples),
        f"{r.throughput:.1f}",
        "–" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}",
        _speedup_text(r.speedup.get("resnet50"), r.reliable),
        _speedup_text(r.speedup.get("resnet101"), r.reliable),
    ]
    if paper:
        pub = r.published or {}
        cells += [str(pub.get("coco_ap", "–")), str(pub.get("gflops", "–"))]
    return cells


def _table_notes(result: BenchResult, paper: bool) -> list[str]:
    """What the numbers are (units, memory kinds, published sources) and every skipped backend with its reason."""
    notes = [
        "GMACs: conv+linear per image. Latency: per batch, median/p90 over interleaved rounds; spread = IQR/median. "
        "vs R50/R101: ResNet latency ÷ model latency on the same backend, same run.",
    ]
    notes += [f"mem: {MEMORY_KINDS[k]}" for k in sorted({r.memory_kind for r in result.results})]
    if paper:
        notes += [f"AP/GFLOPs (pub.): {PUBLISHED_SOURCE}", PUBLISHED_HEADLINE]
    unreliable = [r for r in result.results if not r.reliable]
    if unreliable:
        notes.append(f"{UNRELIABLE_MARK} {RULE}:")
        notes += [
            f"  {display_name(r.model)} on {r.backend} ({r.batch}×{r.input[0]}×{r.input[1]}): {r.unreliable_reason}"
            for r in unreliable
        ]
    for s in result.skipped:
        notes.append(f"skipped {s.backend}{f' ({s.model})' if s.model else ''}: {s.reason}")
    return notes


def render_table(result: BenchResult, paper: bool | None = None) -> Any:
    """A rich Table of every row, titled with the machine line; skipped backends and units in the caption."""
    from rich.markup import escape
    from rich.table import Table

    paper = result.paper if paper is None else paper
    table = Table(title=f"maedet-bench · {machine_line(result.machine)}", title_justify="left")
    for name, justify in _TABLE_COLUMNS:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if paper:
        for name in ("AP (pub.)", "GFLOPs (pub.)"):
            table.add_column(name, justify="right", style="dim")
    previous: tuple[str, int, tuple[int, int]] | None = None
    for r in result.results:
        group = (r.backend, r.batch, r.input)
        if previous is not None and group != previous:
            table.add_section()
        previous = group
        table.add_row(*_table_cells(r, paper))
    table.caption = escape("\n".join(_table_notes(result, paper)))
    table.caption_justify = "left"
    return table


def _group_rows(result: BenchResult) -> dict[tuple[str, int, tuple[int, int]], list[BenchRow]]:
    groups: dict[tuple[str, int, tuple[int, int]], list[BenchRow]] = {}
    for r in result.results:
        groups.setdefault((r.backend, r.batch, r.input), []).append(r)
    return groups


_Group = tuple[str, int, tuple[int, int]]


def _group_label(group: _Group) -> str:
    backend, batch, size = group
    return f"{backend} ({batch}×{size[0]}×{size[1]})"


def _plot_latency(ax: Any, groups: dict[_Group, list[BenchRow]], colours: list[str]) -> None:
    """Median latency against GMACs, one line per backend/input; ResNets as hollow squares; bars up to p90."""
    for i, (group, rows) in enumerate(groups.items()):
        colour = colours[i % len(colours)]
        rows = sorted(rows, key=lambda r: r.gmacs)
        ours = [r for r in rows if not is_reference(r.model)]
        refs = [r for r in rows if is_reference(r.model)]
        if ours:
            ax.plot(
                [r.gmacs for r in ours], [r.latency.median for r in ours], "o-", color=colour, label=_group_label(group)
            )
        if refs:
            ax.scatter(
                [r.gmacs for r in refs],
                [r.latency.median for r in refs],
                marker="s",
                s=80,
                facecolors="none",
                edgecolors=colour,
                linewidths=2,
                label=None if ours else _group_label(group),
            )
        for r in rows:
            ax.annotate(
                display_name(r.model),
                (r.gmacs, r.latency.median),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
            )
            ax.errorbar(
                r.gmacs,
                r.latency.median,
                yerr=[[0], [max(0.0, r.latency.p90 - r.latency.median)]],
                color=colour,
                alpha=0.4,
                capsize=2,
            )
        shaky = [r for r in rows if not r.reliable]
        if shaky:
            ax.scatter([r.gmacs for r in shaky], [r.latency.median for r in shaky], **_UNRELIABLE_POINT)
    ax.scatter([], [], marker="s", facecolors="none", edgecolors="black", label="ResNet (reference)")
    if any(not r.reliable for rows in groups.values() for r in rows):
        ax.scatter([], [], label=f"unreliable ({UNRELIABLE_MARK} in the table)", **_UNRELIABLE_POINT)
    ax.set_xlabel("GMACs per image (conv + linear)")
    ax.set_ylabel("median latency per batch (ms), bar to p90")
    ax.set_title("Latency vs compute (C2..C5 backbones)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_speedups(ax: Any, groups: dict[_Group, list[BenchRow]], models: list[str], colours: list[str]) -> None:
    """Speedup vs ResNet-50 per model, one bar per backend/input, labelled with the ratio; unreliable ones hatched."""
    width = 0.8 / max(1, len(groups))
    for i, (group, rows) in enumerate(groups.items()):
        by_model = {r.model: r for r in rows}
        xs = [m + (i - (len(groups) - 1) / 2) * width for m in range(len(models))]
        values = [(by_model[m].speedup.get("resnet50") if m in by_model else None) or 0.0 for m in models]
        bars = ax.bar(xs, values, width=width, color=colours[i % len(colours)], label=_group_label(group))
        for bar, m, value in zip(bars, models, values, strict=True):
            if not value:
                continue
            reliable = by_model[m].reliable
            if not reliable:
                bar.set_hatch(UNRELIABLE_HATCH)
                bar.set_alpha(0.5)
            ax.annotate(
                f"{value:.2f}×" + ("" if reliable else UNRELIABLE_MARK),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    if any(not r.reliable and r.speedup.get("resnet50") for rows in groups.values() for r in rows):
        ax.bar([0], [0], color="white", edgecolor="grey", hatch=UNRELIABLE_HATCH, label="hatched: unreliable")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(models)), [display_name(m) for m in models], rotation=20)
    ax.set_ylabel("speedup vs ResNet-50 (same backend, same run)")
    ax.set_title("Speedup vs ResNet-50 (higher is faster)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_figure(result: BenchResult) -> Any:
    """Left: median latency against GMACs per backend, ResNets marked. Right: speedup vs ResNet-50 bars.

    In the spirit of the paper's Figure 1; the title carries the machine line, the axes their units. Unreliable
    rows (maedet.bench.reliability) are crossed on the left and hatched on the right. Close it with
    ``matplotlib.pyplot.close(fig)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not result.results:
        raise BenchError("there are no measured rows to plot.")
    groups = _group_rows(result)
    fig, (ax_lat, ax_bar) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.1, 1]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    _plot_latency(ax_lat, groups, colours)
    _plot_speedups(ax_bar, groups, list(dict.fromkeys(r.model for r in result.results)), colours)
    fig.suptitle(f"maedet-bench — {machine_line(result.machine)}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_png(result: BenchResult) -> bytes:
    """:func:`plot_figure` as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = plot_figure(result)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def write_plot(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """:func:`plot_png`, written atomically."""
    path = Path(path)
    data = plot_png(result)
    _check_parent(path)
    atomic_write_bytes(path, data)
    return path
