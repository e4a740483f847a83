"""The validation plot of a latency table: predicted against measured, log axes, with the ±5% and ±10% bands.

A reader sees at once whether the errors are spread evenly over the latency range or grow at one end (the figures
alone cannot say). Random members of the space and MAE-DET-S/M/L are marked apart; the figures are in the title.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["validation_plot"]


def validation_plot(rows: Sequence[Mapping[str, Any]], figures: Mapping[str, Any], title: str) -> bytes:
    """PNG bytes: one point per network (steady measured ms, predicted ms), the y = x line and the bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    measured = np.asarray([r["measured_ms"] for r in rows])
    predicted = np.asarray([r["predicted_ms"] for r in rows])
    published = np.asarray([str(r["name"]).startswith("maedet_") for r in rows])
    low, high = 0.8 * min(measured.min(), predicted.min()), 1.25 * max(measured.max(), predicted.max())
    line = np.geomspace(low, high, 50)
    fig, axis = plt.subplots(figsize=(6.5, 6))
    axis.fill_between(line, 0.9 * line, 1.1 * line, color="tab:blue", alpha=0.12, label="±10%")
    axis.fill_between(line, 0.95 * line, 1.05 * line, color="tab:blue", alpha=0.22, label="±5%")
    axis.plot(line, line, color="black", lw=0.8)
    axis.scatter(measured[~published], predicted[~published], s=14, color="tab:blue", label="random members")
    axis.scatter(measured[published], predicted[published], s=50, marker="^", color="tab:red", label="MAE-DET-S/M/L")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    for ax in (axis.xaxis, axis.yaxis):  # plain ms at 1, 2, 5 × 10^k: log-axis minor labels collide
        ax.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("measured, ms per batch (steady: anchor-scaled)")
    axis.set_ylabel("predicted, ms per batch")
    axis.set_title(f"{title}\n{_figures_text(figures)}", fontsize=8)
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    data = io.BytesIO()
    fig.savefig(data, format="png", dpi=110)
    plt.close(fig)
    return data.getvalue()


def _figures_text(figures: Mapping[str, Any]) -> str:
    raw = figures.get("unscaled") or {}
    nan = float("nan")
    return (
        f"{100 * figures['within_5pct']:.0f}% within ±5%, {100 * figures['within_10pct']:.0f}% within ±10%, "
        f"RMSPE {figures['rmspe_pct']:.1f}%, ρ {figures['spearman_rho']:.3f}\n(unscaled: "
        f"{100 * raw.get('within_10pct', nan):.0f}% within ±10%, RMSPE {raw.get('rmspe_pct', nan):.1f}%)"
    )
