"""The sweep's figures, drawn from its tables and decisions (a notebook redraws any of them).

Everything here reads the sweep's tidy results table (one row per candidate x task x language x
metric, with the headline metrics' standard error and 95% interval), ``comparisons.csv``
(:mod:`~layerswap.sweep.compare`) for the "indistinguishable from the best" marks, and the decisions
(:mod:`~layerswap.sweep.selection`) for which swap is the best one. Whether a metric is better high
or low comes from the task that reports it (``layerswap.evaluate.tasks``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from layerswap.evaluate.tasks import higher_is_better
from layerswap.figures import label_points, pyplot, save_figure
from layerswap.sweep.compare import against, eliminated
from layerswap.sweep.selection import ALL, SWAP_METHOD, Decisions, decide, per_candidate

plt = pyplot()


def _metric_label(task: str, metric: str) -> str:
    arrow = "lower is better" if not higher_is_better(metric) else "higher is better"
    return f"{task} {metric} ({arrow})"


def _marks(comparisons: pd.DataFrame | None, task: str, metric: str, scope: str, best: str) -> tuple[set[str], set[str]]:
    """What the verdicts say of each swap against ``best`` in ``scope``: indistinguishable from it (its pair's
    own test, see compare), and eliminated by the halving race (pooled over languages; never boxed)."""
    if comparisons is None or comparisons.empty:
        return set(), set()
    out = set(eliminated(comparisons, task).query("metric == @metric")["candidate"])
    rows = against(comparisons, task, metric, best, scope)
    return set(rows.loc[rows["verdict"] == "indistinguishable", "candidate"]) - out, out


def swap_heatmap(
    results: pd.DataFrame, task: str, metric: str, comparisons: pd.DataFrame | None = None, decisions: Decisions | None = None
) -> plt.Figure:
    """Metric over (bottom, top) language layers per language; the best transition per cell.

    The best swap of each language is ``decisions``' (:mod:`~layerswap.sweep.selection`; after halving
    not always the best raw mean: its cell shows it; default: decided on ``results``). With
    ``comparisons`` (``comparisons.csv``) it is starred, the cells whose swap its pair's test cannot
    separate from it (indistinguishable at the family's Bonferroni level) are boxed, and the swaps the
    halving race eliminated are marked with a dagger (whatever a later test on fewer examples says).
    """
    decisions = decisions or decide(results, [(task, metric)])
    rows = results[(results["task"] == task) & (results["metric"] == metric) & (results["method"] == SWAP_METHOD)]
    langs = sorted(rows["language"].unique())
    fig, axes = plt.subplots(1, max(1, len(langs)), figsize=(4.2 * max(1, len(langs)) + 0.8, 3.8), squeeze=False)
    high = higher_is_better(metric)
    for ax, lang in zip(axes[0], langs, strict=False):
        scope = ALL if len(langs) == 1 else lang
        sub = rows[rows["language"] == lang].dropna(subset=["value"])
        # The decided best swap (after halving: not always the best raw mean) keeps its cell.
        best = decisions.best_swap(task, scope) or ""
        sub = sub.sort_values("value", ascending=not high, kind="stable")
        sub = sub.sort_values("candidate", key=lambda c: c != best, kind="stable").drop_duplicates(["bottom", "top"])
        grid = sub.pivot(index="bottom", columns="top", values="value").sort_index(ascending=False)
        names = sub.pivot(index="bottom", columns="top", values="candidate").reindex_like(grid)
        im = ax.imshow(grid.values.astype(float), cmap="viridis" if high else "viridis_r", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [str(int(c)) for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(int(i)) for i in grid.index])
        ax.set_xlabel("top layers from the language expert")
        ax.set_ylabel("bottom layers from the language expert")
        marked, raced = _marks(comparisons, task, metric, scope, best)
        ax.set_title(lang)
        for (i, j), v in np.ndenumerate(grid.values.astype(float)):
            if math.isnan(v):
                continue
            name = names.iat[i, j]
            mark = "*" if name == best and comparisons is not None else "\u2020" if name in raced else ""
            ax.text(j, i, f"{v:.4g}{mark}", ha="center", va="center", fontsize=8, color="white")
            if name in marked:
                ax.add_patch(plt.Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="white", linewidth=2))
        fig.colorbar(im, ax=ax, label=metric)
    note = "\n* best swap; boxed: indistinguishable from it (paired, Bonferroni); \u2020 eliminated by the race" if comparisons is not None else ""
    fig.suptitle(f"Layer swap: {_metric_label(task, metric)}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def _yerr(frame: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars (value minus low, high minus value) from ``ci_low``/``ci_high``; 0 where unknown."""
    low = (frame["value"] - frame["ci_low"]).astype(float).fillna(0).clip(lower=0)
    high = (frame["ci_high"] - frame["value"]).astype(float).fillna(0).clip(lower=0)
    return np.vstack([low.to_numpy(), high.to_numpy()])


def baseline_bars(
    results: pd.DataFrame, task: str, metric: str, comparisons: pd.DataFrame | None = None, decisions: Decisions | None = None
) -> plt.Figure:
    """The best swap against every baseline, per language, with 95% intervals: the best swap of
    ``decisions`` (a halving sweep's: the best survivor, or the race's best when it dropped every swap;
    default: decided on ``results``, the best mean over languages).

    A dot plot rather than bars from zero: log-likelihoods and bits per byte have no natural zero,
    and the differences between candidates are what matters. The error bars are each candidate's own
    interval; whether two candidates differ is the paired comparison's call (``comparisons.csv``),
    which is sharper than overlapping bars suggest: with ``comparisons`` a second panel shows each
    baseline minus the best swap (pooled over languages) with its paired 95% interval and Holm p.
    """
    rows = results[(results["task"] == task) & (results["metric"] == metric)].copy()
    for col in ("ci_low", "ci_high"):
        if col not in rows:
            rows[col] = np.nan
    table = per_candidate(results, task, metric)
    swaps = set(table.loc[table["method"] == SWAP_METHOD, "candidate"])
    keep = [c for c in table["candidate"] if c not in swaps]
    best_swap = (decisions or decide(results, [(task, metric)])).best_swap(task)
    if best_swap is not None:
        keep = [best_swap] + keep
    langs = sorted(rows["language"].unique())
    paired = _paired_rows(comparisons, task, metric, best_swap)
    # Wide enough for the titles whatever the number of candidates (a few made them run into each other).
    if paired is None:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.75 * len(keep)), 4))
    else:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(10.0, 3.2 + 1.5 * len(keep)), 4), gridspec_kw={"width_ratios": [1, 1]})
        _paired_panel(ax2, paired, keep[1:], metric, str(best_swap))
    x = np.arange(len(keep))
    for i, lang in enumerate(langs):
        sub = rows[rows["language"] == lang].groupby("candidate").first().reindex(keep)
        ax.errorbar(x + (i - (len(langs) - 1) / 2) * 0.12, sub["value"].to_numpy(dtype=float), yerr=_yerr(sub), fmt="o", ms=8, capsize=4, label=lang)
    if best_swap is not None:
        ax.axvspan(-0.4, 0.4, color="tab:green", alpha=0.12, label="best layer swap")
    ax.set_xticks(x, keep, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (95% interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Best layer swap vs baselines:\n{_metric_label(task, metric)}", fontsize=10)
    ax.legend(fontsize=8, title="language", loc="best")
    fig.tight_layout()
    return fig


def _paired_rows(comparisons: pd.DataFrame | None, task: str, metric: str, best_swap: str | None) -> pd.DataFrame | None:
    if comparisons is None or comparisons.empty or best_swap is None:
        return None
    rows = against(comparisons, task, metric, best_swap)
    return rows.set_index("candidate") if len(rows) else None


#: The colour of a paired verdict in the figures; anything else (indistinguishable, undetermined, none) is grey.
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}


def verdict_colour(verdict: object) -> str:
    """Green only for "better", red only for "worse": an undetermined verdict is no evidence either way."""
    return VERDICT_COLOURS.get(verdict, "tab:gray") if isinstance(verdict, str) else "tab:gray"


def _paired_panel(ax: plt.Axes, paired: pd.DataFrame, names: list[str], metric: str, best: str) -> None:
    """Each candidate minus ``best`` with its pair's interval (at the family's level); the verdict as colour, adjusted p as label."""
    sub = paired.reindex(names)
    x = np.arange(len(names))
    # An unbounded side (a one-sided race bound, too few examples for the level) is drawn as an arrow, not a bar.
    low, high = sub["ci_low"].astype(float), sub["ci_high"].astype(float)
    yerr = np.vstack([(sub["diff"] - low.where(np.isfinite(low))).fillna(0).clip(lower=0),
                      (high.where(np.isfinite(high)) - sub["diff"]).fillna(0).clip(lower=0)])
    colors = [verdict_colour(v) for v in sub["verdict"]]
    for i in range(len(names)):
        ax.errorbar(x[i], sub["diff"].iloc[i], yerr=yerr[:, i : i + 1], fmt="s", color=colors[i], capsize=4)
        for bound, marker in ((low.iloc[i], "v"), (high.iloc[i], "^")):
            if bound in (-math.inf, math.inf):
                ax.plot(x[i], sub["diff"].iloc[i], marker=marker, color=colors[i], ms=9, alpha=0.5)
        top = sub["ci_high"].iloc[i] if np.isfinite(sub["ci_high"].iloc[i]) else sub["diff"].iloc[i]
        if pd.notna(sub["p_adjusted"].iloc[i]):
            ax.annotate(f"p={sub['p_adjusted'].iloc[i]:.2g}", (x[i], top), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.margins(y=0.15)  # room for the p labels above the highest interval
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(f"{metric}: candidate minus {best}")
    ax.set_title("Paired difference (interval at the family's level, adjusted p)\nred worse, green better, grey indistinguishable/undetermined", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def rank_correlation(results: pd.DataFrame, task: str, metric: str) -> tuple[float | None, float, float, int]:
    """Spearman's rho between the analysis score and the metric over the scored swaps, with a 95%
    bootstrap interval over swaps (2000 resamples, seed 0); rho is None with too few swaps."""
    from layerswap.stats import spearman_ci

    table = per_candidate(results, task, metric).dropna(subset=["analysis_score", "value"])
    if len(table) < 3 or table["analysis_score"].nunique() < 2 or table["value"].nunique() < 2:
        return None, math.nan, math.nan, len(table)
    rho, low, high = spearman_ci(table["analysis_score"].to_numpy(float), table["value"].to_numpy(float))
    return rho, low, high, len(table)


def score_scatter(results: pd.DataFrame, task: str, metric: str) -> tuple[plt.Figure, float | None]:
    """Analysis score of each swap candidate against its measured metric (with its 95% interval),
    titled with Spearman's rho and its bootstrap interval over swaps."""
    table = per_candidate(results, task, metric).dropna(subset=["analysis_score", "value"])
    fig, ax = plt.subplots(figsize=(5, 4))
    rho, low, high, n = rank_correlation(results, task, metric)
    ax.errorbar(table["analysis_score"], table["value"], yerr=_yerr(table), fmt="o", color="tab:blue", capsize=4)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # scores like -0.0826: fewer ticks, no overlapping labels
    ax.set_xlabel("analysis score of the swap (boundaries.yaml)")
    ax.set_ylabel(f"{metric} (mean over languages, 95% interval)")
    title = f"Did the diagnostics predict {task}?"
    if rho is None:
        title += "\n(too few scored swaps for a rank correlation)"
    else:
        title += f"\nSpearman rho = {rho:.2f} (95% CI {_ci(low, high)}) over {n} swaps"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()  # the final axes box first: the labels are placed inside it
    label_points(ax, list(table["analysis_score"]), list(table["value"]), [str(c).removeprefix("swap-") for c in table["candidate"]])
    return fig, rho


def _ci(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def write_figures(
    results: pd.DataFrame,
    out: Path,
    tasks: Iterable[tuple[str, str]],
    comparisons: pd.DataFrame | None = None,
    decisions: Decisions | None = None,
) -> dict[str, dict]:
    """All sweep figures for each (task, metric) into ``out``; returns what was drawn."""
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, dict] = {}
    for task, metric in tasks:
        key = f"{task}-{metric}"
        stem = re.sub(r"[^\w.=-]+", "_", key)  # a task named by a path (lm_eval:dir/t.yaml) is no file name
        info: dict = {}
        if (results["method"] == SWAP_METHOD).any():
            info["heatmap"] = save_figure(swap_heatmap(results, task, metric, comparisons, decisions), out / f"swap_heatmap_{stem}")[0]
        info["bars"] = save_figure(baseline_bars(results, task, metric, comparisons, decisions), out / f"best_vs_baselines_{stem}")[0]
        fig, rho = score_scatter(results, task, metric)
        info["scatter"] = save_figure(fig, out / f"score_vs_metric_{stem}")[0]
        info["rho"] = rho
        info["rho_ci"] = rank_correlation(results, task, metric)[1:]
        drawn[key] = info
    return drawn


def halving_figure(race: Any) -> plt.Figure:
    """One panel per round: each candidate that entered it, minus the round's leader (oriented so that
    negative is worse), with its paired interval from the two-sided bound at the level it was tested
    at; red: dropped in that round, grey: survives, green: the leader."""
    rounds = race.rounds
    names = list(dict.fromkeys(row["candidate"] for dec in rounds for row in dec.rows))
    cols = min(4, max(1, len(rounds)))
    nrows = math.ceil(len(rounds) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols + 1.2, 0.22 * len(names) * nrows + 1.6 * nrows), squeeze=False, sharey=True)
    y = {name: i for i, name in enumerate(names)}
    for ax, dec in zip(axes.ravel(), rounds, strict=False):
        for row in dec.rows:
            colour = {"leader": "tab:green", "eliminated": "tab:red"}.get(row["status"], "tab:gray")
            diff, bound = row["diff"], row["bound"]
            half = (bound - diff) if bound == bound and diff == diff else 0.0
            ax.errorbar(diff, y[row["candidate"]], xerr=[[half], [half]], fmt="o", color=colour, capsize=3, ms=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"round {dec.round}: {len(dec.entered)} on {dec.examples} ex.", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("minus leader (neg. = worse)", fontsize=8)
    for ax in axes.ravel()[len(rounds):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0, 0].invert_yaxis()
    for ax in axes[:, 0]:  # the shared y axis: every row's labels at the first row's size
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(
        f"Halving on {race.plan.task}: each candidate minus the round's leader\n"
        "(interval at the level the round tested it; red: dropped in that round)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


