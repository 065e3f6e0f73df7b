"""The paired verdicts in words, read from ``comparisons.csv`` (:mod:`~layerswap.sweep.compare`).

Every sentence states one row: its verdict, the interval of the same test at the level it was judged at,
and how many examples would detect the observed difference with 80% power
(:func:`layerswap.power.examples_needed`). A candidate the halving race eliminated is reported as
eliminated, with the round, the bound and the examples of that round, never as indistinguishable.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from layerswap.evaluate.tasks import higher_is_better
from layerswap.paired_tests import EXACT_MAX_N
from layerswap.sweep.compare import ALPHA, POWER, RACE, against, compared_leader, eliminated
from layerswap.sweep.selection import EXPERTS, SWAP_METHOD


def confidence(level: float) -> str:
    """``99.7%``: the confidence of an interval at ``1 - level``."""
    return f"{100.0 * (1.0 - float(level)):.3g}%"


def _num(v: float) -> str:
    return "-inf" if v == -math.inf else "inf" if v == math.inf else f"{v:.3g}"


def fmt(row: pd.Series, *, flip: bool = False) -> str:
    """``diff +0.12, 99.7% CI [0.03, 0.2], adjusted p = 0.01`` (``flip``: the reference minus the candidate)."""
    sign = -1.0 if flip else 1.0
    lo, hi = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    side = "one-sided " if row["test"] == RACE else ""
    p = "adjusted p < 0.001" if row["p_adjusted"] == 0 else f"adjusted p = {row['p_adjusted']:.2g}"  # no resample crossed 0
    return f"diff {sign * row['diff']:+.3g}, {side}{confidence(row['level'])} CI [{_num(lo)}, {_num(hi)}], {p}"


def needed(row: pd.Series) -> str:
    """``; 240 examples would detect it with 80% power`` (the observed difference, at the same level)."""
    v = row.get("examples_needed", math.nan)
    if pd.isna(v) or row["test"] == RACE:
        return ""
    if v == math.inf:
        return "; no number of examples detects a difference of 0"
    return f"; {int(v):,} examples would detect it with {POWER:.0%} power"


def race_line(row: pd.Series) -> str:
    """``lang`` dropped in round 0: worse than ``base`` by at least 6.6 with 99.6% confidence over 6 examples."""
    bound = row["ci_high"] if math.isfinite(row["ci_high"]) else row["ci_low"]
    return (f"`{row['candidate']}` dropped in round {int(row['eliminated_in_round'])}: worse than `{row['reference']}` "
            f"by at least {abs(bound):.3g} with {confidence(row['level'])} confidence (one-sided) over {int(row['n'])} examples")


def family_intro(rows: pd.DataFrame, task: str, alpha: float) -> str:
    """How the pairs of one family were judged: the tests, the level, the multiplicity adjustment."""
    final = rows[rows["test"] != RACE]
    tests = " / ".join(sorted(set(final["test"]) - {"none"})) or "none"
    level = final["level"].dropna()
    if level.empty:
        return f"Paired tests ({tests})."
    m = max(1, round(alpha / float(level.iloc[0])))
    text = (f"One paired test per pair ({tests}), each at level {float(level.iloc[0]):.2g} = {alpha} / {m} (Bonferroni over the "
            f"{m} pairs compared on {task}); each interval is the set of differences the same test does not reject at that level, "
            "so a verdict never contradicts its interval.")
    unbounded = final[(final["test"] == "permutation") & ~(final["ci_low"].abs() < math.inf)]
    if len(unbounded):
        n = int(unbounded["n"].min())
        smallest = f"2 / 2^{n} = {2.0 / 2**n:.2g}" if n <= EXACT_MAX_N else "2 / 10,000 (its random sign patterns)"
        text += (f" On {n} examples the permutation test's smallest p-value is {smallest}, above that level: it cannot "
                 "separate anything there, so its intervals are unbounded; the examples-needed figures say how many examples "
                 "would settle each difference.")
    return text


def verdict_lines(comparisons: pd.DataFrame, task: str, metric: str, *, alpha: float = ALPHA) -> list[str]:
    """The verdict on ``task``/``metric`` in words: what the race eliminated, which candidates the leader
    cannot be separated from, and whether it beats each expert and baseline (pooled over languages)."""
    lead = compared_leader(comparisons, task, metric)
    if lead is None:
        return ["No per-example scores were stored, so no paired comparison: the ranking carries no uncertainty and decides nothing."]
    rows = against(comparisons, task, metric, lead)
    race = eliminated(comparisons, task)
    race = race[race["metric"] == metric]
    dropped = set(race["candidate"])
    final = rows[(rows["test"] != RACE) & ~rows["candidate"].isin(dropped)]
    n, fewest = int(rows["n"].max()), int(rows["n"].min())
    shared = f"the same {n} examples" if fewest == n else f"the examples each shares with it ({fewest} to {n}: a candidate dropped early by halving has fewer)"
    lines = [f"Paired comparisons with `{lead}` on {shared}. " + family_intro(rows, task, alpha)]
    if len(race):
        lines.append("Eliminated by the halving race: " + "; ".join(race_line(r) for _, r in race.iterrows()) + ".")
    same = final[final["verdict"].isin(["indistinguishable", "undetermined"])]
    better = final[final["verdict"] == "better"]  # possible for a ratio: the leader is by mean over languages
    worse = final[final["verdict"] == "worse"]
    if same.empty and better.empty:
        lines.append(f"`{lead}` is the winner: every other candidate is significantly worse" + (" or was eliminated by the race." if len(race) else "."))
    if len(same):
        listed = "; ".join(f"`{r['candidate']}` ({fmt(r)}{needed(r)})" for _, r in same.iterrows())
        lines.append(f"**Not a clear winner**: statistically indistinguishable from `{lead}` at this sample size: {listed}.")
    if len(better):
        listed = "; ".join(f"`{r['candidate']}` ({fmt(r)})" for _, r in better.iterrows())
        lines.append(f"**Not a clear winner**: pooled over all examples these are significantly better than `{lead}`: {listed}.")
    if len(worse) and not (same.empty and better.empty):
        lines.append("Significantly worse than it: " + ", ".join(f"`{c}`" for c in worse["candidate"]) + ".")
    said = [_against_words(r, "the " + ("expert" if r["candidate"] in EXPERTS else "baseline")) for _, r in rows.iterrows()
            if r["method"] != SWAP_METHOD]
    if said:
        lines.append(f"`{lead}` " + "; ".join(said) + ".")
    return lines


def _against_words(r: pd.Series, what: str) -> str:
    """``beats the expert `math` (diff ...)``: the reference against the row's candidate (the row flipped)."""
    if r["test"] == RACE:
        return f"beats {what} `{r['candidate']}` (the race eliminated it in round {int(r['eliminated_in_round'])}: {fmt(r, flip=True)})"
    verb = {"worse": "beats", "better": "is beaten by", "indistinguishable": "is indistinguishable from",
            "undetermined": "cannot be compared (too few examples) with"}[r["verdict"]]
    return f"{verb} {what} `{r['candidate']}` ({fmt(r, flip=True)}{needed(r)})"


def against_lines(comparisons: pd.DataFrame, task: str, metric: str, subject: str, others: list[str]) -> list[str]:
    """``subject`` against each of ``others`` (those compared with it), one sentence."""
    rows = against(comparisons, task, metric, subject)
    found = [rows[rows["candidate"] == o] for o in others]
    said = [_against_words(r.iloc[0], "the " + ("expert" if o in EXPERTS else "baseline")) for o, r in zip(others, found, strict=True) if len(r)]
    return [f"`{subject}` " + "; ".join(said) + "."] if said else []


def answer_lines(results: pd.DataFrame, comparisons: pd.DataFrame, task: str, metric: str, best_swap: str | None) -> list[str]:
    """The answer a reader came for: the target's candidates with their intervals, best first, and the
    best layer swap against each expert and baseline on it (the soup, TIES...)."""
    from layerswap.sweep.selection import per_candidate

    table = per_candidate(results, task, metric).dropna(subset=["value"])
    if table.empty:
        return []
    table = table.sort_values("value", ascending=not higher_is_better(metric), kind="stable")

    def cell(r: Any) -> str:
        ci = "" if pd.isna(r.ci_low) else f" [{r.ci_low:.3g}, {r.ci_high:.3g}]"
        return f"`{r.candidate}` = {r.value:.4g}{ci}"

    direction = "higher" if higher_is_better(metric) else "lower"
    lines = [f"**{task} {metric}** ({direction} is better; mean over languages with its 95% interval): "
             + ", ".join(cell(r) for r in table.itertuples()) + "."]
    if best_swap is not None and best_swap in set(table["candidate"]):
        others = [str(c) for c, m in zip(table["candidate"], table["method"], strict=True) if m != SWAP_METHOD]
        others = [c for c in EXPERTS if c in others] + [c for c in others if c not in EXPERTS]
        lines += against_lines(comparisons, task, metric, best_swap, others)
    return lines
