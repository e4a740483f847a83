"""An AP-per-format report out: a rich table, JSON, CSV and a plot of AP against latency (a point per format).

Every output says what its AP measures: accuracy against the annotations, or, with pseudo-labels, agreement with
PyTorch fp32 (columns, JSON keys and axis labels say so). Latencies are this machine's (the machine line goes with
them); speedups are against the fp32 format of the same runtime, measured side by side in the same run.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .accuracy_results import ACCURACY, AP_NAMES, AccuracyReport, FormatRow
from .machine import machine_line

__all__ = ["csv_text", "json_text", "plot_png", "render_table"]


def _title(report: AccuracyReport) -> str:
    if report.metric == ACCURACY:
        return "COCO box AP per format (%), against the annotations"
    threshold = report.config.get("pseudo_label_score_threshold")
    return (
        f"agreement with PyTorch fp32 per format (%): COCO box AP against PyTorch fp32's own detections scoring "
        f">= {threshold} (pseudo-labels), not accuracy"
    )


def _label(report: AccuracyReport, name: str) -> str:
    return name if report.metric == ACCURACY else f"agreement {name}"


def _ms(row: FormatRow) -> str:
    return "-" if row.latency is None else f"{row.latency.median:.2f}"


def _speedup(row: FormatRow) -> str:
    return "" if row.speedup is None else f"{row.speedup:.2f}× vs {row.speedup_over}"


def render_table(report: AccuracyReport) -> Any:
    """The rich table: format, backend, precision, AP, AP50, AP75, drop, ms, speedup; skips and notes below."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=_title(report), title_justify="left", caption_justify="left")
    table.add_column("format", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    table.add_column("precision", no_wrap=True)
    for name in AP_NAMES:
        table.add_column(_label(report, name), justify="right")
    table.add_column("drop vs PyTorch fp32 (points)", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("speedup vs fp32 of the same runtime", justify="left")
    for row in report.rows:
        table.add_row(
            row.format,
            row.backend,
            row.precision + (f" ({row.int8_mode})" if row.int8_mode else ""),
            *(f"{100 * row.ap[n]:.1f}" for n in AP_NAMES),
            f"{row.ap_drop:+.2f}",
            _ms(row),
            _speedup(row),
        )
    reasons: dict[str, list[str]] = {}
    for skipped in report.skipped:  # formats that share a reason (every CUDA one) share its line
        reasons.setdefault(skipped.reason, []).append(skipped.format)
    lines = [f"skipped {', '.join(names)}: {reason}" for reason, names in reasons.items()]
    lines += [f"{r.format}: {r.note}" for r in report.rows if r.note]
    lines += [*report.notes, f"latency: median ms, batch 1, {machine_line(report.machine)}"]
    table.caption = escape("\n".join(lines))
    return table


def json_text(report: AccuracyReport) -> str:
    """One object: metric, units, machine, config, rows (with skipped formats listed apart), notes (strict JSON)."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def csv_columns(prefix: str) -> list[str]:
    return [
        "format", "backend", "device", "precision", "int8_mode", *(prefix + n for n in AP_NAMES),
        f"{prefix}drop_points", "detections", "latency_median_ms", "latency_p90_ms", "latency_spread_pct",
        "samples", "speedup", "speedup_over", "skipped_reason",
    ]  # fmt: skip


def _csv_row(row: FormatRow, prefix: str) -> dict[str, Any]:
    lat = row.latency
    return {
        "format": row.format,
        "backend": row.backend,
        "device": row.device,
        "precision": row.precision,
        "int8_mode": row.int8_mode or "",
        **{prefix + n: round(row.ap[n], 6) for n in AP_NAMES},
        f"{prefix}drop_points": round(row.ap_drop, 4),
        "detections": row.detections,
        "latency_median_ms": "" if lat is None else round(lat.median, 3),
        "latency_p90_ms": "" if lat is None else round(lat.p90, 3),
        "latency_spread_pct": "" if lat is None else round(lat.spread_pct, 2),
        "samples": "" if lat is None else lat.samples,
        "speedup": "" if row.speedup is None else round(row.speedup, 4),
        "speedup_over": row.speedup_over or "",
        "skipped_reason": "",
    }


def csv_text(report: AccuracyReport) -> str:
    """One line per format: the measured ones, then the skipped ones with their reason (AP columns empty)."""
    columns = csv_columns(report.prefix)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(_csv_row(r, report.prefix) for r in report.rows)
    writer.writerows({"format": s.format, "backend": s.backend, "skipped_reason": s.reason} for s in report.skipped)
    return buffer.getvalue()


def label_offsets(points: list[tuple[float, float]], near: float = 0.06) -> list[tuple[int, int]]:
    """Where each point's label goes (offset points): formats that measure alike (ort-fp32 and ov-fp32 share an AP
    and nearly a latency) would print their names on top of each other, so each label near an earlier point (within
    ``near`` of the plot's span on both axes) steps one line further down."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets = []
    for i, (x, y) in enumerate(points):
        crowd = sum(abs(x - px) <= near * span_x and abs(y - py) <= near * span_y for px, py in points[:i])
        offsets.append((6, 4 - 11 * crowd))
    return offsets


def plot_png(report: AccuracyReport) -> bytes:
    """AP (%) against median latency (ms), one labelled point per timed format, PyTorch fp32's AP as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    try:
        timed = [r for r in report.rows if r.latency is not None]
        points = [(row.latency.median, 100 * row.ap["AP"]) for row in timed]  # type: ignore[union-attr]
        for row, point, offset in zip(timed, points, label_offsets(points), strict=True):
            ax.scatter(*point, s=50, zorder=3)
            ax.annotate(row.format, point, textcoords="offset points", xytext=offset, fontsize=8)
        reference = report.rows[0]
        ax.axhline(100 * reference.ap["AP"], color="grey", linestyle="--", linewidth=1, label=reference.format)
        ax.set_xlabel("latency, median ms (batch 1)")
        ax.set_ylabel(f"{_label(report, 'AP')} (%)")
        ax.set_title(_title(report), fontsize=8)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(True, alpha=0.3)
        fig.suptitle(f"maedet-bench — {machine_line(report.machine)}", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def write_report(report: AccuracyReport, outputs: dict[str, Any]) -> dict[str, Any]:
    """Render every output asked for ('JSON', 'CSV', 'plot' → path) in memory, then write them all or none."""
    from .outputs import write_rendered

    render = {"JSON": lambda r: json_text(r).encode(), "CSV": lambda r: csv_text(r).encode(), "plot": plot_png}
    return write_rendered({what: render[what](report) for what in outputs}, outputs)
