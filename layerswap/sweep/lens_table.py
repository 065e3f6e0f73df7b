"""Which lens predicted this run: every lens's score of each evaluated swap against the swap's measured outcome.

The lenses are the analyses the sweep took candidates from (``candidates.boundaries``,
:func:`~layerswap.sweep.candidates.lens_sources`). Each scores every evaluated swap geometry by the
one boundary rule (:func:`layerswap.analysis.boundaries.score`) on its own per-layer contrast
(``contrast.csv`` beside its ``boundaries.yaml``), not only the swaps it proposed, so the lenses are
compared on the same geometries. A swap's outcome is its paired difference to the task's leader
pooled over languages, from ``comparisons.csv``, oriented so that higher is better: on the
target task where it separates (at least :data:`MIN_GEOMETRIES` swaps evaluated on it and one of
them significantly different from the reference), else on the screen. Each lens's Spearman rho
between score and outcome carries a 95% percentile bootstrap interval over geometries
(:func:`layerswap.stats.spearman_ci`); a lens that cannot be computed says why instead.

``lens_table.csv``: one row per lens and evaluated swap (a lens without scores: one row with
``why``); the lens's rho, interval and number of geometries repeat on each of its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from layerswap.evaluate.tasks import get_task, higher_is_better
from layerswap.figures import save_figure
from layerswap.io import write_text_atomic
from layerswap.sweep.figures import _ci, plt
from layerswap.sweep.selection import ALL, SWAP_METHOD, per_candidate

if TYPE_CHECKING:
    from layerswap.sweep.candidates import LensSource
    from layerswap.sweep.config import SweepConfig

LENS_TABLE_FILE = "lens_table.csv"
FIGURE_STEM = "lens_table"
#: Fewest swap geometries, with a score and an outcome each, a lens's rank correlation is computed on.
MIN_GEOMETRIES = 3
COLUMNS = [
    "lens", "separation", "candidate", "bottom", "top", "transition", "proposed", "score", "outcome",
    "task", "metric", "reference", "basis", "rho", "ci_low", "ci_high", "n", "why",
]


@dataclass(frozen=True)
class Outcome:
    """The swaps' measured outcome: candidate -> paired difference to ``reference`` (higher is better)."""

    task: str
    metric: str
    reference: str
    values: pd.Series
    basis: str  # how it was chosen, in words


def _paired(comparisons: pd.DataFrame | None, results: pd.DataFrame, task: str) -> Outcome | None:
    """Each evaluated swap's paired difference to the task's leader, pooled over languages (the leader
    meets every candidate in ``comparisons.csv``; a swap leader's own outcome is 0)."""
    from layerswap.sweep.compare import against, compared_leader

    metric = get_task(task).metric
    if comparisons is None or comparisons.empty:
        return None
    ref = compared_leader(comparisons, task, metric)
    if ref is None:
        return None
    mine = against(comparisons, task, metric, ref)
    mine = mine[mine["method"] == SWAP_METHOD]
    sign = 1.0 if higher_is_better(metric) else -1.0
    values = pd.Series(sign * mine["diff"].to_numpy(float), index=mine["candidate"].astype(str))
    swaps = set(results.loc[(results["task"] == task) & (results["method"] == SWAP_METHOD), "candidate"].astype(str))
    if ref in swaps:
        values[ref] = 0.0
    separated = mine["verdict"].isin(["better", "worse"]).any()
    return Outcome(task, metric, ref, values.dropna(), "separates" if separated else "separates none")


def measured_outcome(results: pd.DataFrame, comparisons: pd.DataFrame | None, config: SweepConfig) -> Outcome | None:
    """The target's paired outcome where it separates the swaps, else the screen's (see the module)."""
    screen, target = config.screen_task(), config.target
    if target is not None and target != screen:
        found = _paired(comparisons, results, target)
        if found is not None and len(found.values) >= MIN_GEOMETRIES and found.basis == "separates":
            return Outcome(found.task, found.metric, found.reference, found.values, f"the target {target}, which separates the swaps")
        why = (
            f"only {0 if found is None else len(found.values)} swap(s) were evaluated on it"
            if found is None or len(found.values) < MIN_GEOMETRIES
            else f"no swap differs significantly from {found.reference} on it"
        )
        basis = f"the screen {screen} (not the target {target}: {why})"
    else:
        basis = f"{screen}, the task the sweep decides on"
    found = _paired(comparisons, results, screen)
    if found is not None:
        return Outcome(found.task, found.metric, found.reference, found.values, basis)
    table = per_candidate(results, screen, get_task(screen).metric)
    table = table[table["method"] == SWAP_METHOD].dropna(subset=["value"])
    if table.empty:
        return None
    sign = 1.0 if higher_is_better(get_task(screen).metric) else -1.0
    values = pd.Series(sign * table["value"].to_numpy(float), index=table["candidate"].astype(str))
    return Outcome(screen, get_task(screen).metric, "none", values, basis + "; unpaired means: no per-example scores were stored")


def _contrast(source: LensSource) -> tuple[np.ndarray | None, float, str | None]:
    """The lens's per-layer ``diff`` and per-layer penalty, or why its scores cannot be computed."""
    if source.why is not None:
        return None, math.nan, source.why
    contrast = source.path.parent / "contrast.csv"
    if not contrast.is_file():
        return None, math.nan, f"no contrast.csv beside {source.path}: its scores of other geometries cannot be computed"
    d = pd.read_csv(contrast)["diff"].to_numpy(float)
    tau = (source.data.get("rule") or {}).get("penalty_per_layer")
    if tau is None:
        return None, math.nan, f"{source.path} has no rule.penalty_per_layer: write it again with layerswap analyze"
    if np.isnan(d).any():
        return None, math.nan, f"it has no per-layer contrast to score with ({source.data.get('reason', 'a share is undefined')})"
    return d, float(tau), None


def _score(d: np.ndarray, tau: float, b: int, u: int, t: int) -> float:
    from layerswap.analysis.boundaries import score
    from layerswap.io.swap_geometry import SwapGeometry

    return score(d, b, u, t, tau) if SwapGeometry(b, u, t).fits(len(d)) else math.nan


def _correlation(scores: np.ndarray, outcome: np.ndarray) -> tuple[float, float, float, int, str | None]:
    from layerswap.stats import spearman_ci

    ok = np.isfinite(scores) & np.isfinite(outcome)
    n = int(ok.sum())
    if n < MIN_GEOMETRIES:
        return math.nan, math.nan, math.nan, n, f"only {n} evaluated swap geometr{'y has' if n == 1 else 'ies have'} a score and an outcome: a rank correlation needs at least {MIN_GEOMETRIES}"
    x, y = scores[ok], outcome[ok]
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan, math.nan, math.nan, n, f"its score is the same for all {n} evaluated geometries" if np.unique(x).size < 2 else "every swap has the same outcome"
    rho, low, high = spearman_ci(x, y)
    return rho, low, high, n, None


def lens_table(results: pd.DataFrame, comparisons: pd.DataFrame | None, config: SweepConfig) -> pd.DataFrame:
    """One row per lens and evaluated swap: its score, the swap's outcome, the lens's rho (see the module)."""
    from layerswap.sweep.candidates import lens_sources

    sources = lens_sources(config.candidates.boundaries)
    outcome = measured_outcome(results, comparisons, config)
    swaps = results[results["method"] == SWAP_METHOD].drop_duplicates("candidate")
    if outcome is not None:
        swaps = swaps[swaps["candidate"].astype(str).isin(outcome.values.index)]
    rows: list[dict] = []
    for source in sources:
        d, tau, why = _contrast(source)
        proposed = {g for g, _ in source.ranked()[: config.candidates.top_n]} if source.why is None else set()
        head = {"lens": source.name, "separation": source.data.get("separation", "skipped" if source.why else "n/a")}
        if outcome is None:
            why = why or "no swap was evaluated with an outcome"
        if why is not None:
            rows.append(head | {"why": why})
            continue
        mine = []
        for r in swaps.itertuples():
            g = (int(r.bottom), int(r.top), 0 if pd.isna(r.transition) else int(r.transition))
            mine.append(head | {"candidate": r.candidate, "bottom": g[0], "top": g[1], "transition": g[2], "proposed": g in proposed,
                                "score": _score(d, tau, *g), "outcome": float(outcome.values[str(r.candidate)])})
        rho, low, high, n, why = _correlation(np.array([m["score"] for m in mine], float), np.array([m["outcome"] for m in mine], float))
        extra = {"task": outcome.task, "metric": outcome.metric, "reference": outcome.reference, "basis": outcome.basis,
                 "rho": rho, "ci_low": low, "ci_high": high, "n": n, "why": why}
        rows += [m | extra for m in mine] or [head | extra]
    return pd.DataFrame(rows, columns=COLUMNS)


def _per_lens(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby("lens", sort=False).first().reset_index()


def lens_figure(table: pd.DataFrame):  # noqa: ANN201  (a matplotlib Figure)
    """Left: each lens's rho with its 95% interval (or why it has none); right: each lens's score rank
    against the swaps' outcome, one colour per lens."""
    lenses = _per_lens(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(lenses) + 2.6), gridspec_kw={"width_ratios": [1, 1.2]})
    y = np.arange(len(lenses))
    for i, r in enumerate(lenses.itertuples()):
        if pd.notna(r.rho):
            lo, hi = (r.ci_low, r.ci_high) if pd.notna(r.ci_low) else (r.rho, r.rho)
            colour = "tab:green" if lo > 0 else ("tab:red" if hi < 0 else "tab:gray")
            left.errorbar(r.rho, i, xerr=[[r.rho - lo], [hi - r.rho]], fmt="o", color=colour, capsize=4)
            left.annotate(f"n={int(r.n)}", (r.rho, i), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        else:
            left.annotate("n/a: " + str(r.why)[:60], (0, i), ha="center", va="center", fontsize=7, color="tab:gray")
    left.axvline(0, color="black", lw=0.8)
    left.set_xlim(-1.05, 1.05)
    left.set_yticks(y, lenses["lens"])
    left.set_ylim(len(lenses) - 0.5, -0.5)  # first lens on top, room for the n/a notes
    left.set_xlabel("Spearman rho: lens score vs outcome (95% CI)")
    left.grid(axis="x", alpha=0.3)
    scored = table.dropna(subset=["score", "outcome"])
    for lens, group in scored.groupby("lens", sort=False):
        ranks = group["score"].rank(pct=True)
        right.plot(ranks, group["outcome"], "o", alpha=0.75, label=str(lens))
    right.axhline(0, color="black", lw=0.8)
    right.set_xlabel("lens score (rank among the evaluated swaps, 1 = highest)")
    first = table.dropna(subset=["task"]).head(1)
    what = f"{first['task'].iloc[0]} {first['metric'].iloc[0]} minus {first['reference'].iloc[0]}" if len(first) else "outcome"
    right.set_ylabel(f"{what} (higher is better)")
    if len(scored):
        right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.suptitle("Which lens predicted this run? Green: interval above zero, red: below, grey: undecided", fontsize=10)
    fig.tight_layout()
    return fig


def _num(v: float, fmt: str = "+.3f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def table_lines(table: pd.DataFrame, figure: Path | None = None, *, root: Path | None = None) -> list[str]:
    """The lens table in markdown: how the outcome was measured, one line per lens, the per-swap scores."""
    lines = ["## Which lens predicted this run", ""]
    if table.empty:
        return lines + ["No lens proposed candidates (candidates.boundaries is empty): there is nothing to compare.", ""]
    first = table.dropna(subset=["task"]).head(1)
    if len(first):
        r = first.iloc[0]
        lines += [
            f"Each evaluated swap's outcome is its paired difference to `{r['reference']}` on {r['task']} {r['metric']} (pooled over "
            f"languages, oriented so that higher is better), measured on {r['basis']}. Each lens scores every evaluated swap "
            "geometry by the boundary rule on its own per-layer contrast; Spearman's rho between score and outcome with a 95% "
            f"bootstrap interval over geometries (2000 resamples, seed 0). Every row is in `{LENS_TABLE_FILE}`.",
            "",
        ]
    lines += ["| lens | separation | proposed swaps | rho | 95% CI | geometries | note |", "|---|---|---|---|---|---|---|"]
    for r in _per_lens(table).itertuples():
        mine = table[table["lens"] == r.lens]
        proposed = int(mine["proposed"].fillna(False).astype(bool).sum())
        ci = "" if pd.isna(r.rho) else _ci(r.ci_low, r.ci_high)
        n = "" if pd.isna(r.n) else str(int(r.n))
        note = "" if pd.isna(r.why) else str(r.why).replace("|", "/")
        lines.append(f"| {r.lens} | {r.separation} | {proposed} | {_num(r.rho, '+.2f')} | {ci} | {n} | {note} |")
    scored = table.dropna(subset=["candidate"])
    if len(scored):
        wide = scored.pivot_table(index="candidate", columns="lens", values="score", aggfunc="first", sort=False)
        outcome = scored.groupby("candidate", sort=False)["outcome"].first()
        by = scored[scored["proposed"].fillna(False).astype(bool)].groupby("candidate")["lens"].agg(", ".join)
        order = outcome.sort_values(ascending=False).index
        lenses = list(dict.fromkeys(scored["lens"]))
        lines += ["", "| swap | outcome | proposed by | " + " | ".join(f"{x} score" for x in lenses) + " |", "|---|---|---|" + "---|" * len(lenses)]
        for c in order:
            cells = [_num(wide.loc[c].get(x, math.nan), "+.4f") for x in lenses]
            lines.append(f"| `{c}` | {_num(outcome[c], '+.4g')} | {by.get(c, '')} | " + " | ".join(cells) + " |")
    if figure is not None:
        rel = figure.relative_to(root) if root is not None and figure.is_relative_to(root) else figure
        lines += ["", f"![which lens predicted this run]({rel})"]
    return lines + [""]


def lens_section(results: pd.DataFrame, comparisons: pd.DataFrame | None, config: SweepConfig, out: Path, *, root: Path) -> list[str]:
    """Compute the lens table, write ``out/lens_table.csv`` and ``out/figures/lens_table.png``, return the report's lines."""
    from layerswap.errors import LayerswapError

    try:
        table = lens_table(results, comparisons, config)
    except LayerswapError as exc:  # an analysis folder moved since the sweep read it: the report still comes
        return ["## Which lens predicted this run", "", f"The lens table could not be made: {exc}", ""]
    if table.empty:
        return table_lines(table)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / LENS_TABLE_FILE, table.to_csv(index=False))
    figure = save_figure(lens_figure(table), out / "figures" / FIGURE_STEM)[0]
    return table_lines(table, figure, root=root)


def read_lens_section(sweep_dir: Path, *, root: Path) -> list[str]:
    """The lines of a sweep's lens table as it wrote them (the demo's report reads, never recomputes)."""
    path = sweep_dir / LENS_TABLE_FILE
    if not path.is_file():
        return []
    figure = sweep_dir / "figures" / f"{FIGURE_STEM}.png"
    return table_lines(pd.read_csv(path), figure if figure.is_file() else None, root=root)
