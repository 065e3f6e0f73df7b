"""Figures of an analysis (matplotlib Figures, saved as PNG and SVG); no computation of their own.

matplotlib is imported lazily with the Agg backend, so the analysis runs on machines without a
display and ``import layerswap.analysis`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from layerswap.figures import pyplot, save_figure  # noqa: F401  (save_figure re-exported for the analysis report)
from layerswap.io import module_sort_key

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _finish_layer_module_axes(fig: Figure, ax: Any) -> Figure:
    """Axis labels and tick layout shared by the layer x module heatmaps."""
    ax.set_xlabel("module")
    ax.set_ylabel("layer (0 = bottom)")
    ax.tick_params(axis="x", rotation=45)
    ax.tick_params(axis="y", rotation=0)
    for lbl in ax.get_xticklabels():
        lbl.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def _pivot(df: pd.DataFrame, value: str) -> pd.DataFrame:
    table = df.pivot_table(index="layer", columns="module", values=value, aggfunc="first", dropna=False)
    table = table[sorted(table.columns, key=module_sort_key)]
    return table.sort_index()


def magnitude_heatmap(cells: pd.DataFrame, expert: str, *, kind: str = "deltas", label: str | None = None) -> Figure:
    """Layer x module heatmap of one expert: ``rel_l2`` of its delta, mean Fisher per parameter, or another lens's value (``label``)."""
    import seaborn as sns

    plt = pyplot()
    df = cells[cells["expert"] == expert].copy()
    if label is not None:  # a lens's own value (see analysis/lenses)
        df["value"] = df["sumsq"]
        title = f"{kind} lens, {expert}: value per layer x module"
    elif kind == "grad":
        df["value"] = df["sumsq"] / df["numel"]
        label, title = (
            "squared mean gradient per parameter",
            f"Gradient of {expert} data on the base: squared mean gradient per layer x module",
        )
    elif kind == "importance":
        df["value"] = df["sumsq"] / df["numel"]
        label, title = (
            "mean Fisher per parameter (mean squared gradient)",
            f"Importance of {expert} data: mean Fisher per layer x module",
        )
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            df["value"] = np.sqrt(df["sumsq"]) / np.sqrt(df["base_sumsq"])
        label, title = "rel_l2 = ||W_expert - W_base|| / ||W_base||", f"{expert} vs base: relative change per layer x module"
    table = _pivot(df, "value")
    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 0.75 * table.shape[1]), 1.8 + 0.32 * table.shape[0]))
    sns.heatmap(table, ax=ax, cmap="viridis", cbar_kws={"label": label}, linewidths=0.3, linecolor="white")
    ax.set_title(title)
    return _finish_layer_module_axes(fig, ax)


def overlap_heatmap(overlap: pd.DataFrame, expert_a: str, expert_b: str, k: float, *, kind: str = "deltas") -> Figure:
    """Layer x module heatmap of the top-k% Jaccard index relative to independent sets (log2 colour, 0 = chance)."""
    import seaborn as sns

    plt = pyplot()
    df = overlap[
        (overlap["expert_a"] == expert_a)
        & (overlap["expert_b"] == expert_b)
        & (overlap["k_percent"] == k)
        & (overlap["module"] != "all")
        & overlap["layer"].notna()
    ].copy()
    df["layer"] = df["layer"].astype(int)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["log2ratio"] = np.log2(df["jaccard_ratio"].astype(float))
    values = _pivot(df, "log2ratio")
    ratios = _pivot(df, "jaccard_ratio")
    finite = values.to_numpy()[np.isfinite(values.to_numpy())]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(max(6.5, 2.5 + 0.8 * values.shape[1]), 1.8 + 0.32 * values.shape[0]))
    sns.heatmap(
        values.replace([np.inf, -np.inf], np.nan),
        ax=ax,
        cmap="RdBu_r",
        center=0,
        vmin=-lim,
        vmax=lim,
        annot=ratios.round(1),
        fmt="",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": "log2(Jaccard / expected if independent)"},
        linewidths=0.3,
        linecolor="white",
    )
    total = overlap[
        (overlap["expert_a"] == expert_a)
        & (overlap["expert_b"] == expert_b)
        & (overlap["k_percent"] == k)
        & overlap["layer"].isna()
    ]
    headline = ""
    if len(total):
        row = total.iloc[0]
        headline = f"\ntotal Jaccard {row['jaccard']:.4f} vs {row['expected_jaccard']:.4f} expected ({row['jaccard_ratio']:.2f}x)"
    what = "importance" if kind == "importance" else "|delta|"
    ax.set_title(
        f"Top-{k:g}% {what} overlap, {expert_a} vs {expert_b}{headline}\ncell text: Jaccard / independent expectation (blank: no top-k% parameter there)",
        fontsize=10,
    )
    return _finish_layer_module_axes(fig, ax)


def share_plot(layers: pd.DataFrame, boundaries: dict[str, Any] | None, *, kind: str = "deltas") -> Figure:
    """Each expert's per-layer share, with the recommended language layers shaded and boundaries drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    n = int(layers["layer"].max()) + 1 if len(layers) else 0
    for expert, df in layers.groupby("expert", sort=False):
        ax.plot(df["layer"], df["share"] * 100, marker="o", markersize=3.5, label=str(expert))
    title = {"deltas": "Share of squared update per layer", "importance": "Share of Fisher importance per layer"}.get(
        kind, f"Share of the {kind} lens's value per layer"
    )
    if boundaries is not None and n:
        b, u, t = boundaries["bottom"], boundaries["top"], boundaries["transition"]
        style = "-" if boundaries.get("basis") == "measured" else ":"
        lang = boundaries["experts"]["lang"]
        if b:
            ax.axvspan(-0.5, b - 0.5, color="tab:green", alpha=0.08)
            ax.axvline(b - 0.5, color="k", linestyle=style, linewidth=1)
        if u:
            ax.axvspan(n - u - 0.5, n - 0.5, color="tab:green", alpha=0.08)
            ax.axvline(n - u - 0.5, color="k", linestyle=style, linewidth=1)
        if t:
            if b:
                ax.axvspan(b - 0.5, b + t - 0.5, color="tab:orange", alpha=0.15)
            if u:
                ax.axvspan(n - u - t - 0.5, n - u - 0.5, color="tab:orange", alpha=0.15)
        basis = "measured" if boundaries.get("basis") == "measured" else "prior (no clear separation)"
        title += f"\n{lang} layers: bottom {b}, top {u}, transition {t} ({basis})"
    ax.set_title(title)
    ax.set_xlabel("layer (0 = bottom)")
    ax.set_ylabel("share of the task's total Fisher (%)" if kind == "importance" else "share of the expert's total (%)")
    if n:
        ax.set_xticks(range(n))
        ax.set_xlim(-0.5, n - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(title="expert" if kind != "importance" else "data")
    fig.tight_layout()
    return fig
