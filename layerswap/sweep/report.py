"""The markdown report of a merge-then-evaluate sweep, and :func:`write_report`, which writes it all.

The report states the decisions (:mod:`~layerswap.sweep.selection`) and the paired verdicts
(:mod:`~layerswap.sweep.compare`), the per-language tables with intervals, the halving rounds and
whether the screen predicted the target, and embeds the figures (:mod:`~layerswap.sweep.figures`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from layerswap.evaluate.tasks import get_task, higher_is_better
from layerswap.figures import label_points, save_figure
from layerswap.io import write_text_atomic
from layerswap.sweep.compare import ALPHA, against, compare_candidates, compared_leader
from layerswap.sweep.figures import _ci, halving_figure, plt, write_figures
from layerswap.sweep.lens_table import lens_section
from layerswap.sweep.race_stats import RULE
from layerswap.sweep.selection import DECISIONS_FILE, Decisions, Selection, SweepResult, decide_sweep, per_candidate
from layerswap.sweep.verdicts import answer_lines, verdict_lines

if TYPE_CHECKING:
    from layerswap.sweep.config import SweepConfig
    from layerswap.sweep.race import HalvingResult

def _with_interval(group: pd.DataFrame) -> pd.DataFrame:
    """Candidate x language table of ``value [ci_low, ci_high]`` and the mean over languages."""
    pivot = group.pivot_table(index="candidate", columns="language", values="value", aggfunc="mean")
    order = pivot.mean(axis=1).sort_values(ascending=not higher_is_better(str(group["metric"].iloc[0]))).index
    if "ci_low" not in group or group["ci_low"].isna().all():
        pivot["mean"] = pivot.mean(axis=1)
        return pivot.reindex(order).map(lambda v: f"{v:.4g}")
    cells = group.assign(cell=[f"{v:.5g} [{lo:.4g}, {hi:.4g}]" for v, lo, hi in zip(group["value"], group["ci_low"], group["ci_high"], strict=True)])
    table = cells.pivot_table(index="candidate", columns="language", values="cell", aggfunc="first")
    if table.shape[1] > 1:
        table["mean"] = pivot.mean(axis=1).map(lambda v: f"{v:.4g}")
    return table.reindex(order)


#: The columns of a paired table in the report (``comparisons.csv`` has them all).
PAIRED_COLUMNS = ["candidate", "diff", "ci_low", "ci_high", "level", "p_adjusted", "test", "n", "verdict", "examples_needed", "eliminated_in_round"]


def _paired_table(comparisons: pd.DataFrame, task: str, metric: str) -> str | None:
    lead = compared_leader(comparisons, task, metric)
    if lead is None:
        return None
    rows = against(comparisons, task, metric, lead)
    return rows[PAIRED_COLUMNS].rename(columns={"diff": f"diff vs {lead}"}).to_markdown(index=False, floatfmt=".3g")


STATISTICS_NOTE = (
    "Each candidate's interval is 95%: for means of per-example scores (the proxy's log-likelihood) the mean +- 1.96 "
    "standard errors (ddof 1, as lm-evaluation-harness), for 0/1 scores (exact match, language fidelity) Wilson's score "
    "interval (a mean over several languages: +- 1.96 combined standard errors); for bits per byte (total bits / total "
    "bytes) a percentile bootstrap over sentences (2000 resamples, seed 0). Two candidates are compared on the examples "
    "both were scored on, each pair once per task, by one test whose interval is the set of differences that test does "
    "not reject (the sign-flip permutation test inverted for a shift; Newcombe's paired score interval for 0/1 scores; "
    "the paired bootstrap for bits per byte), at alpha = 0.05 / m for the m pairs of the task (Bonferroni, so "
    "adjusted p = min(1, p x m)): a verdict never contradicts its interval. A candidate the halving race eliminated keeps "
    "the race's verdict (its round, one-sided bound and examples). `examples_needed` is the number of examples at which "
    "the observed difference would be detected with 80% power at the same level. Every pair (the leader, the best "
    "swap and the base against every candidate, the experts and baselines among themselves; per language the leader "
    "and the best swap) is in `comparisons.csv`; the per-example scores behind them are in `candidates/*.scores.csv`."
)


def report_markdown(
    results: pd.DataFrame,
    selection: Selection,
    figures: dict[str, dict],
    *,
    root: Path,
    title: str = "layerswap sweep report",
    notes: Iterable[str] = (),
    comparisons: pd.DataFrame | None = None,
    sections: Iterable[str] = (),
    target: tuple[str, str] | None = None,
    decisions: Decisions | None = None,
) -> str:
    """The report, the answer first: the ``target`` (task, metric)'s candidates with their intervals and the
    best swap against each expert and baseline (with ``decisions``), then the leader on the decision task and
    its paired verdict, then per-task tables with intervals and the figures; ``sections``: more markdown
    lines after the notes (the halving rounds, screen against target)."""
    lines = [f"# {title}", ""]
    comps = comparisons if comparisons is not None else pd.DataFrame(columns=["task", "metric", "language", "role", "test", "reference", "candidate"])
    decided = (selection.task, selection.metric)
    said = {decided}
    if target is not None:
        best = decisions.best_swap(target[0]) if decisions is not None else None
        if target == decided and best == selection.winner:
            best = None  # the leader's own verdict below says how it fares against each expert and baseline
        answer = answer_lines(results, comps, *target, best)
        if answer:
            said.add(target)
            lines += [f"## The answer: {target[0]} (the target)", "", *answer, ""]
            lines += [*verdict_lines(comps, *target), ""] if target != decided else []
    direction = "higher" if higher_is_better(selection.metric) else "lower"
    lead = per_candidate(results, selection.task, selection.metric).set_index("candidate").loc[selection.winner]
    interval = "" if pd.isna(lead["ci_low"]) else f" (95% CI [{lead['ci_low']:.4g}, {lead['ci_high']:.4g}])"
    lines += [f"## The decision: {selection.task}", ""] if target is not None and target != decided and len(said) > 1 else []
    lines.append(
        f"**Best mean on {selection.task} {selection.metric}** (mean over languages, {direction} is better): "
        f"`{selection.winner}` = {selection.value:.5g}{interval}."
    )
    lines += verdict_lines(comps, selection.task, selection.metric)
    lines.append(selection.comparison())
    if selection.runner_up is not None:
        lines.append(f"Runner-up by mean: `{selection.runner_up}` = {selection.runner_up_value:.5g}.")
    lines.append("")
    for note in notes:
        lines.append(f"> {note}")
        lines.append("")
    lines += [f"> {STATISTICS_NOTE}", ""]
    lines += list(sections)
    for (task, metric), group in results.groupby(["task", "metric"], sort=False):
        lines += [f"## {task}: {metric}", "", _with_interval(group).to_markdown(), ""]
        paired = _paired_table(comps, str(task), str(metric))
        if paired is not None:
            if (task, metric) not in said:
                lines += verdict_lines(comps, str(task), str(metric)) + [""]
            lines += ["Paired comparisons with the leader (pooled over languages; candidate minus leader):", "", paired, ""]
        info = figures.get(f"{task}-{metric}", {})
        for key, caption in (("heatmap", "metric over swap sizes"), ("bars", "best swap vs baselines"), ("scatter", "analysis score vs measured metric")):
            if key in info:
                rel = Path(info[key]).relative_to(root) if Path(info[key]).is_relative_to(root) else info[key]
                lines.append(f"![{caption}]({rel})")
        if info.get("rho") is not None:
            low, high, n = info.get("rho_ci", (math.nan, math.nan, 0))
            lines.append("")
            lines.append(
                f"Spearman's rho between the analysis score and {metric}: {info['rho']:.2f} "
                f"(95% bootstrap CI over the {n} swaps {_ci(low, high)})."
            )
        lines.append("")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path


def halving_section(race: Any, n_candidates: int, fig_dir: Path, *, root: Path) -> list[str]:
    """The race in the report: one line per round, the stop reason, the evaluations spent, the figure."""
    plan = race.plan
    full = n_candidates * plan.max_examples * plan.languages
    lines = [
        f"## Successive halving on {plan.task}",
        "",
        f"Blocks of {plan.block} examples per language (at most {plan.max_examples}); a candidate is dropped when its paired "
        f"one-sided upper bound against the round's leader lies below zero, at family-wise alpha = {plan.alpha} split over "
        f"{plan.rounds} rounds and both directions (alpha = {plan.alpha_round:.3g} per round and direction) and Holm-corrected within each round "
        f"({RULE}). Every unit and round is in `halving/` (`rounds.csv`).",
        "",
        "| round | examples | candidates | leader | dropped (upper bound of its difference with the leader; negative: worse) |",
        "|---|---|---|---|---|",
    ]
    for dec in race.rounds:
        bounds = {r["candidate"]: r["bound"] for r in dec.rows}
        dropped = ", ".join(f"`{c}` ({bounds[c]:.3g})" for c in dec.eliminated) or "-"
        lines.append(f"| {dec.round} | {dec.examples} | {len(dec.entered)} | `{dec.leader}` | {dropped} |")
    last = race.rounds[-1] if race.rounds else None
    stop = (getattr(last, "stop_line", None) or last.stop) if last is not None and last.stop else "every round was run"
    lines += [
        "",
        f"Stopped: {stop}. Survivors: {', '.join(f'`{c}`' for c in race.survivors)}. "
        f"Example-evaluations: {race.spent} of the {full} an exhaustive sweep would spend ({race.spent / full:.0%}).",
        "",
    ]
    if race.rounds:
        path = save_figure(halving_figure(race), fig_dir / f"halving_rounds_{plan.task}")[0]
        lines += [f"![halving rounds]({_rel(path, root)})", ""]
    return lines


def screen_target_correlation(results: pd.DataFrame, scores: dict[str, Any], screen: str, target: str) -> dict[str, Any]:
    """Spearman's rho (95% bootstrap interval over candidates) between the screen and the target over
    the candidates evaluated on both. The screen is averaged over the examples all of them share (a
    halving sweep scored some on fewer), the target is its headline metric (mean over languages)."""
    from layerswap.evaluate.tasks import get_task
    from layerswap.stats import spearman_ci

    smetric, tmetric = get_task(screen).metric, get_task(target).metric
    tvals = per_candidate(results, target, tmetric).dropna(subset=["value"]).set_index("candidate")["value"]
    names = [c for c in tvals.index if scores.get(c) is not None and (scores[c]["task"] == screen).any()]
    svals: dict[str, float] = {}
    if names:
        keys = None
        for c in names:
            s = scores[c][scores[c]["task"] == screen]
            ids = set(zip(s["lang"], s["id"], strict=True))
            keys = ids if keys is None else keys & ids
        for c in names:
            s = scores[c][scores[c]["task"] == screen]
            s = s[[k in (keys or set()) for k in zip(s["lang"], s["id"], strict=True)]]
            svals[c] = float(s.groupby("lang")["score"].mean().mean()) if len(s) else math.nan
    names = [c for c in names if svals.get(c) == svals.get(c)]
    out: dict[str, Any] = {"screen": screen, "target": target, "candidates": names, "n": len(names), "rho": None, "low": math.nan, "high": math.nan,
                           "screen_values": svals, "target_values": {c: float(tvals[c]) for c in names}}
    if len(names) >= 3:
        x = np.array([svals[c] for c in names]) * (1 if higher_is_better(smetric) else -1)
        yv = np.array([tvals[c] for c in names]) * (1 if higher_is_better(tmetric) else -1)
        rho, low, high = spearman_ci(x, yv)
        out.update(rho=None if rho != rho else rho, low=low, high=high)
    return out


#: Below this rho (oriented so that positive means "better on the screen, better on the target"), or
#: with an interval reaching zero, the report warns that the screen does not predict the target.
WEAK_RHO = 0.5


def screen_target_section(results: pd.DataFrame, scores: dict[str, Any], screen: str, target: str, fig_dir: Path, *, root: Path) -> list[str]:
    """Does the screen predict the target? Spearman's rho with its interval, a warning when it is weak, a scatter."""
    corr = screen_target_correlation(results, scores, screen, target)
    lines = [f"## Screen ({screen}) against target ({target})", ""]
    if corr["rho"] is None:
        lines.append(
            f"**Warning: the screen's agreement with the target is unknown**: {corr['n']} candidate(s) were evaluated on both "
            "(or one side is constant), too few for a rank correlation; the screen's ranking is not confirmed by the target."
        )
    else:
        weak = corr["rho"] < WEAK_RHO or not corr["low"] > 0
        text = (f"Spearman's rho between {screen} and {target} over the {corr['n']} candidates evaluated on both: "
                f"{corr['rho']:.2f} (95% bootstrap CI {_ci(corr['low'], corr['high'])}; oriented so that positive means better on both).")
        if weak:
            text = "**Warning: the screen is a weak predictor of the target**: " + text + (
                " The candidates the screen dropped may be good on the target: confirm the decision on the target.")
        lines.append(text)
    lines.append("")
    if corr["n"]:
        fig, ax = plt.subplots(figsize=(5, 4))
        xs = [corr["screen_values"][c] for c in corr["candidates"]]
        ys = [corr["target_values"][c] for c in corr["candidates"]]
        ax.plot(xs, ys, "o", color="tab:blue")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # long tick labels (-15.75): fewer ticks, none overlapping
        ax.set_xlabel(f"{screen} (on the examples all share)")
        ax.set_ylabel(f"{target} (mean over languages)")
        rho = "n/a" if corr["rho"] is None else f"{corr['rho']:.2f} {_ci(corr['low'], corr['high'])}"
        ax.set_title(f"Screen vs target: Spearman rho = {rho}", fontsize=10)
        fig.tight_layout()  # the final axes box first: the labels are placed inside it
        label_points(ax, xs, ys, [str(c).removeprefix("swap-") for c in corr["candidates"]])
        path = save_figure(fig, fig_dir / f"screen_vs_target_{screen}_{target}")[0]
        lines += [f"![screen vs target]({_rel(path, root)})", ""]
    return lines
def merge_overhead(results: pd.DataFrame) -> dict[str, float]:
    """Per method, the largest ratio of merge time to evaluation time over its candidates."""
    if results.empty:
        return {}
    per = results.groupby("candidate").agg(method=("method", "first"), m=("merge_time", "first"), t=("time", "sum"))
    per["share"] = per["m"] / per["t"].clip(lower=1e-9)
    return {str(k): float(v) for k, v in per.groupby("method")["share"].max().items()}


def write_report(
    results: pd.DataFrame,
    config: SweepConfig,
    n_candidates: int,
    out: Path,
    scores: dict[str, pd.DataFrame | None] | None = None,
    race: HalvingResult | None = None,
    *,
    same_weights: dict[str, list[str]] | None = None,
) -> SweepResult:
    """Decide (:mod:`~layerswap.sweep.selection`), compare the candidates paired (``comparisons.csv``),
    draw the figures and write ``decisions.csv`` and ``report.md``; returns the :class:`SweepResult`.
    ``scores``: each candidate's per-example scores; ``race``: the halving rounds (a halving sweep),
    whose survivors alone may lead on the screen task; ``same_weights``: candidates that merge to the
    same weights as another (evaluated once), by the first of each group."""
    headline = [(t, get_task(t).metric) for t in config.tasks]
    decisions, selection = decide_sweep(results, headline, config.decision_task(), race)
    comparisons = compare_candidates(results, scores or {}, headline, alpha=ALPHA, decisions=decisions, race=race)
    write_text_atomic(out / "comparisons.csv", comparisons.to_csv(index=False))
    write_text_atomic(out / DECISIONS_FILE, decisions.table().to_csv(index=False))
    figures = write_figures(results, out / "figures", headline, comparisons, decisions)
    sections: list[str] = []
    if race is not None:
        sections += halving_section(race, n_candidates, out / "figures", root=out)
    screen, target = (race.plan.task if race is not None else config.screen), config.target
    if screen is not None and target is not None and screen != target:
        sections += screen_target_section(results, scores or {}, screen, target, out / "figures", root=out)
    sections += lens_section(results, comparisons, config, out, root=out)
    notes = [f"{n_candidates} candidates, each merged in memory into one loaded model (no model folder per candidate)."]
    for first, others in (same_weights or {}).items():
        notes.append(f"Same merged weights (equal merge plans), evaluated once and reported under each name: `{first}` = " + " = ".join(f"`{o}`" for o in others) + ".")
    overhead = merge_overhead(results)
    if overhead:
        notes.append(
            "Merge time as a share of the candidate's evaluation time: "
            + "; ".join(f"{method} up to {share:.1%}" for method, share in overhead.items())
            + "."
        )
    write_text_atomic(
        out / "report.md",
        report_markdown(results, selection, figures, root=out, notes=notes, comparisons=comparisons, sections=sections,
                        target=None if config.target is None else (config.target, get_task(config.target).metric), decisions=decisions),
    )
    return SweepResult(
        results=results,
        halving=race,
        scores=scores or {},
        decisions=decisions,
        selection=selection,
        comparisons=comparisons,
        figures=figures,
        report=out / "report.md",
        overhead=overhead,
    )


