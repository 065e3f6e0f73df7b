"""Plots and the markdown report of a merge-then-evaluate sweep.

Everything here reads the sweep's tidy results table (one row per candidate x task x language x
metric) so that a notebook can redraw any figure from ``results.csv`` alone. Whether a metric is
better high or low comes from the task that reports it (``layerswap.evaluate.tasks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from layerswap.errors import DataError
from layerswap.evaluate.tasks import higher_is_better
from layerswap.figures import pyplot, save_figure

plt = pyplot()

SWAP_METHOD = "layer_swap"


@dataclass(frozen=True)
class Selection:
    """The winner of a sweep on one (task, metric), averaged over the languages."""

    task: str
    metric: str
    winner: str
    value: float
    runner_up: str | None
    runner_up_value: float | None
    best_baseline: str | None
    best_baseline_value: float | None
    winner_is_baseline: bool = False
    best_swap: str | None = None
    best_swap_value: float | None = None

    @property
    def margin_over_baseline(self) -> float | None:
        if self.best_baseline_value is None:
            return None
        sign = 1 if higher_is_better(self.metric) else -1
        return sign * (self.value - self.best_baseline_value)

    def comparison(self) -> str:
        """One sentence: the winner against the best baseline, or, when a baseline wins, the best swap."""
        if self.winner_is_baseline:
            if self.best_swap is None:
                return "The winner is a baseline; no layer swap was evaluated."
            sign = 1 if higher_is_better(self.metric) else -1
            return (
                f"The winner is a baseline: no layer swap beat it. Best layer swap: `{self.best_swap}` = "
                f"{self.best_swap_value:.4g}, {sign * (self.value - self.best_swap_value):.4g} behind."
            )
        if self.best_baseline is None:
            return "No baseline was evaluated."
        return (
            f"Best baseline: `{self.best_baseline}` = {self.best_baseline_value:.4g}; "
            f"margin {self.margin_over_baseline:+.4g} in the winner's favour."
        )


def per_candidate(results: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    """Mean over languages of one (task, metric) per candidate, with its method and swap sizes."""
    rows = results[(results["task"] == task) & (results["metric"] == metric)]
    keys = ["candidate", "method", "bottom", "top", "transition", "analysis_score"]
    agg = rows.groupby("candidate", sort=False).agg(value=("value", "mean"), **{k: (k, "first") for k in keys[1:]})
    return agg.reset_index()


def select(results: pd.DataFrame, task: str, metric: str) -> Selection:
    """Pick the best candidate (mean over languages) and the margin over the best baseline."""
    table = per_candidate(results, task, metric).dropna(subset=["value"])
    if table.empty:
        raise DataError(f"the sweep has no results for task {task} metric {metric}: check the tasks and the data folder")
    table = table.sort_values("value", ascending=not higher_is_better(metric), kind="stable")
    winner = table.iloc[0]
    runner = table.iloc[1] if len(table) > 1 else None
    baselines = table[table["candidate"] != winner["candidate"]]
    baselines = baselines[baselines["method"] != SWAP_METHOD]
    best_base = baselines.iloc[0] if len(baselines) else None
    swaps = table[table["method"] == SWAP_METHOD]
    best_swap = swaps.iloc[0] if len(swaps) else None
    return Selection(
        task=task,
        metric=metric,
        winner=str(winner["candidate"]),
        value=float(winner["value"]),
        runner_up=None if runner is None else str(runner["candidate"]),
        runner_up_value=None if runner is None else float(runner["value"]),
        best_baseline=None if best_base is None else str(best_base["candidate"]),
        best_baseline_value=None if best_base is None else float(best_base["value"]),
        winner_is_baseline=winner["method"] != SWAP_METHOD,
        best_swap=None if best_swap is None else str(best_swap["candidate"]),
        best_swap_value=None if best_swap is None else float(best_swap["value"]),
    )


def _metric_label(task: str, metric: str) -> str:
    arrow = "lower is better" if not higher_is_better(metric) else "higher is better"
    return f"{task} {metric} ({arrow})"


def swap_heatmap(results: pd.DataFrame, task: str, metric: str) -> plt.Figure:
    """Metric over (bottom, top) language layers per language; the best transition per cell."""
    rows = results[(results["task"] == task) & (results["metric"] == metric) & (results["method"] == SWAP_METHOD)]
    langs = sorted(rows["language"].unique())
    fig, axes = plt.subplots(1, max(1, len(langs)), figsize=(4.2 * max(1, len(langs)) + 0.8, 3.8), squeeze=False)
    better = max if higher_is_better(metric) else min
    for ax, lang in zip(axes[0], langs, strict=False):
        sub = rows[rows["language"] == lang]
        grid = sub.groupby(["bottom", "top"])["value"].agg(better).unstack("top").sort_index(ascending=False)
        im = ax.imshow(grid.values.astype(float), cmap="viridis" if higher_is_better(metric) else "viridis_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(int(i)) for i in grid.index])
        ax.set_xlabel("top layers from the language expert")
        ax.set_ylabel("bottom layers from the language expert")
        ax.set_title(f"{lang}")
        for (i, j), v in np.ndenumerate(grid.values.astype(float)):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8, color="white")
        fig.colorbar(im, ax=ax, label=metric)
    fig.suptitle(f"Layer swap: {_metric_label(task, metric)}")
    fig.tight_layout()
    return fig


def baseline_bars(results: pd.DataFrame, task: str, metric: str) -> plt.Figure:
    """The best swap (by the mean over languages) against every baseline, per language.

    A dot plot rather than bars from zero: log-likelihoods and bits per byte have no natural zero,
    and the differences between candidates are what matters.
    """
    rows = results[(results["task"] == task) & (results["metric"] == metric)]
    table = per_candidate(results, task, metric)
    swaps = table[table["method"] == SWAP_METHOD].sort_values("value", ascending=not higher_is_better(metric))
    keep = [c for c in table["candidate"] if c not in set(swaps["candidate"])]
    best_swap = str(swaps.iloc[0]["candidate"]) if len(swaps) else None
    if best_swap is not None:
        keep = [best_swap] + keep
    pivot = rows[rows["candidate"].isin(keep)].pivot_table(index="candidate", columns="language", values="value", aggfunc="mean")
    pivot = pivot.reindex(keep)
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * len(keep), 4))
    x = np.arange(len(keep))
    for i, lang in enumerate(pivot.columns):
        ax.plot(x + (i - (len(pivot.columns) - 1) / 2) * 0.12, pivot[lang].values, "o", ms=8, label=lang)
    if best_swap is not None:
        ax.axvspan(-0.4, 0.4, color="tab:green", alpha=0.12, label="best layer swap")
    ax.set_xticks(x, keep, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Best layer swap vs baselines: {_metric_label(task, metric)}")
    ax.legend(fontsize=8, title="language", loc="best")
    fig.tight_layout()
    return fig


def score_scatter(results: pd.DataFrame, task: str, metric: str) -> tuple[plt.Figure, float | None]:
    """Analysis score of each swap candidate against its measured metric, with Spearman's rho."""
    table = per_candidate(results, task, metric).dropna(subset=["analysis_score", "value"])
    fig, ax = plt.subplots(figsize=(5, 4))
    rho: float | None = None
    if len(table) >= 3 and table["analysis_score"].nunique() > 1 and table["value"].nunique() > 1:
        rho = float(spearmanr(table["analysis_score"], table["value"]).statistic)
    ax.scatter(table["analysis_score"], table["value"], color="tab:blue")
    for _, row in table.iterrows():
        ax.annotate(str(row["candidate"]).removeprefix("swap-"), (row["analysis_score"], row["value"]), fontsize=7, alpha=0.8)
    ax.set_xlabel("analysis score of the swap (boundaries.yaml)")
    ax.set_ylabel(f"{metric} (mean over languages)")
    title = f"Did the diagnostics predict {task}?"
    ax.set_title(title + (f"\nSpearman rho = {rho:.2f} over {len(table)} swaps" if rho is not None else "\n(too few scored swaps for a rank correlation)"))
    fig.tight_layout()
    return fig, rho


def write_figures(results: pd.DataFrame, out: Path, tasks: Iterable[tuple[str, str]]) -> dict[str, dict]:
    """All sweep figures for each (task, metric) into ``out``; returns what was drawn."""
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, dict] = {}
    for task, metric in tasks:
        key = f"{task}-{metric}"
        info: dict = {}
        if (results["method"] == SWAP_METHOD).any():
            info["heatmap"] = save_figure(swap_heatmap(results, task, metric), out / f"swap_heatmap_{key}")[0]
        info["bars"] = save_figure(baseline_bars(results, task, metric), out / f"best_vs_baselines_{key}")[0]
        fig, rho = score_scatter(results, task, metric)
        info["scatter"] = save_figure(fig, out / f"score_vs_metric_{key}")[0]
        info["rho"] = rho
        drawn[key] = info
    return drawn


def report_markdown(
    results: pd.DataFrame,
    selection: Selection,
    figures: dict[str, dict],
    *,
    root: Path,
    title: str = "layerswap sweep report",
    notes: Iterable[str] = (),
) -> str:
    """The report: winner and margin, a per-language table, the figures, and caveats."""
    lines = [f"# {title}", ""]
    direction = "higher" if higher_is_better(selection.metric) else "lower"
    lines.append(
        f"**Winner on {selection.task} {selection.metric}** (mean over languages, {direction} is better): "
        f"`{selection.winner}` = {selection.value:.4g}."
    )
    lines.append(selection.comparison())
    if selection.runner_up is not None:
        lines.append(f"Runner-up: `{selection.runner_up}` = {selection.runner_up_value:.4g}.")
    lines.append("")
    for note in notes:
        lines.append(f"> {note}")
        lines.append("")
    for (task, metric), group in results.groupby(["task", "metric"], sort=False):
        pivot = group.pivot_table(index="candidate", columns="language", values="value", aggfunc="mean")
        pivot["mean"] = pivot.mean(axis=1)
        pivot = pivot.sort_values("mean", ascending=not higher_is_better(str(metric)))
        lines += [f"## {task}: {metric}", "", pivot.to_markdown(floatfmt=".4g"), ""]
        info = figures.get(f"{task}-{metric}", {})
        for key, caption in (("heatmap", "metric over swap sizes"), ("bars", "best swap vs baselines"), ("scatter", "analysis score vs measured metric")):
            if key in info:
                rel = Path(info[key]).relative_to(root) if Path(info[key]).is_relative_to(root) else info[key]
                lines.append(f"![{caption}]({rel})")
        if info.get("rho") is not None:
            lines.append("")
            lines.append(f"Spearman's rho between the analysis score and {metric}: {info['rho']:.2f}.")
        lines.append("")
    return "\n".join(lines)
