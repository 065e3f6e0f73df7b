"""Paired comparisons between a sweep's candidates, and the verdict the reports state in words.

Every candidate of a sweep is scored on the same examples, so two candidates are compared
example by example (``layerswap.stats``): the difference of the headline metric (candidate minus
reference) with a 95% paired-bootstrap interval (2000 resamples, seed 0; Newcombe's paired score
interval for 0/1 scores), and a p-value from
McNemar's exact test for 0/1 scores or a paired permutation test otherwise (bits per byte: a
ratio, resampled and permuted with each sentence's bits and bytes together). Each reference (the
leader, the best layer swap, each baseline and expert; per language only the leader and the best
swap) is compared with every other candidate on the same task and scope; the p-values of that family are Holm-adjusted across the candidates.
A difference counts only when the adjusted p-value is below 0.05; otherwise the two candidates are
"indistinguishable": the data cannot separate them.

``comparisons.csv`` columns: task, metric, language (``all``: every language's examples pooled;
per-language rows, against the leader and the best swap, when the sweep has several), reference, role (leader, best swap, expert,
baseline), candidate, method (the candidate's), diff, ci_low, ci_high, p_value, p_holm, test, n, verdict (better, worse,
indistinguishable: the candidate against the reference; ``undetermined`` below two examples), dropped (example pairs
left out because either side's score is NaN or infinite, e.g. a candidate whose weights overflow; also warned about).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from layerswap.evaluate.tasks import higher_is_better
from layerswap.sweep.selection import ALL, EXPERTS, SWAP_METHOD, Decisions, decide

ALPHA = 0.05
COMPARISON_COLUMNS = [
    "task", "metric", "language", "reference", "role", "candidate", "method",
    "diff", "ci_low", "ci_high", "p_value", "p_holm", "test", "n", "verdict", "dropped",
]


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[np.isfinite(frame[columns].to_numpy(dtype=np.float64)).all(axis=1)]


def _paired(a: pd.DataFrame, b: pd.DataFrame):
    """The paired comparison of ``a`` with ``b`` on their shared examples, and how many pairs were
    left out because a score (or a ratio's bits or bytes) is NaN or infinite."""
    from layerswap.stats import paired_difference, paired_ratio_difference

    merged = a.merge(b, on=["lang", "id"], suffixes=("_a", "_b"))
    m = _finite(merged, ["score_a", "score_b"])
    ratio_cols = ["num_a", "den_a", "num_b", "den_b"]
    ratio = m[ratio_cols].notna().all().all() and len(m) > 0
    if ratio:
        m = _finite(m, ratio_cols)
    dropped = len(merged) - len(m)
    if ratio:
        return paired_ratio_difference(m["num_a"].to_numpy(), m["den_a"].to_numpy(), m["num_b"].to_numpy(), m["den_b"].to_numpy()), dropped
    return paired_difference(m["score_a"].to_numpy(), m["score_b"].to_numpy()), dropped


def _verdict(diff: float, p_holm: float, metric: str, alpha: float) -> str:
    if math.isnan(p_holm):
        return "undetermined"
    if p_holm >= alpha:
        return "indistinguishable"
    return "better" if (diff > 0) == higher_is_better(metric) else "worse"


def _role(name: str) -> str:
    return "expert" if name in EXPERTS else "baseline"


def compare_candidates(
    results: pd.DataFrame,
    scores: dict[str, pd.DataFrame | None],
    tasks: list[tuple[str, str]],
    *,
    alpha: float = ALPHA,
    decisions: Decisions | None = None,
) -> pd.DataFrame:
    """Each candidate against the leader, the best swap and each baseline and expert, per task and scope.

    The leader and the best swap of each task and scope are ``decisions``'
    (:mod:`~layerswap.sweep.selection`; default: decided on ``results`` alone, as an exhaustive sweep
    does); every pair is compared on the examples both were scored on."""
    decisions = decisions or decide(results, tasks)
    methods = results.groupby("candidate", sort=False)["method"].first()
    out: list[dict] = []
    for task, metric in tasks:
        task_scores = {c: s[s["task"] == task] for c, s in scores.items() if s is not None and (s["task"] == task).any()}
        langs = sorted(results.loc[(results["task"] == task) & (results["metric"] == metric), "language"].unique())
        for scope in [ALL] + (langs if len(langs) > 1 else []):
            scoped = task_scores if scope == ALL else {c: s[s["lang"] == scope] for c, s in task_scores.items()}
            decision = decisions.get(task, scope)
            lead, swap = (decision.leader, decision.best_swap) if decision is not None else (None, None)
            refs = [(lead, "leader")] + ([(swap, "best swap")] if swap not in (None, lead) else [])
            if scope == ALL:  # per language: the leader and the best swap only (the heatmap's marks)
                refs += [(str(c), _role(str(c))) for c, m in methods.items() if m != SWAP_METHOD and c != lead]
            bad = {str(c): int((~np.isfinite(s["score"].to_numpy(dtype=np.float64))).sum()) for c, s in scoped.items()}
            bad = {c: k for c, k in bad.items() if k}
            if bad:
                warnings.warn(
                    f"{task} ({'all languages' if scope == ALL else scope}): NaN or infinite scores of "
                    + ", ".join(f"{c} ({k} examples)" for c, k in bad.items())
                    + " are left out of their paired comparisons (column 'dropped' of comparisons.csv)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            for ref, role in refs:
                if ref not in scoped:
                    continue
                block = []
                for cand in methods.index:
                    if cand == ref or cand not in scoped:
                        continue
                    p, dropped = _paired(scoped[cand], scoped[ref])
                    block.append({"task": task, "metric": metric, "language": scope, "reference": ref, "role": role,
                                  "candidate": str(cand), "method": methods[cand], "diff": p.diff, "ci_low": p.low, "ci_high": p.high,
                                  "p_value": p.p_value, "test": p.test, "n": p.n, "dropped": dropped})
                out += _adjust(block, metric, alpha)
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def _adjust(block: list[dict], metric: str, alpha: float) -> list[dict]:
    from layerswap.stats import holm

    for row, p_holm in zip(block, holm([r["p_value"] for r in block]), strict=True):
        row["p_holm"] = p_holm
        row["verdict"] = _verdict(row["diff"], p_holm, metric, alpha)
    return block


def _fmt(row: pd.Series, *, flip: bool = False) -> str:
    """``diff +0.12, 95% CI [0.03, 0.2], Holm p = 0.01`` (``flip``: the reference minus the candidate)."""
    sign = -1.0 if flip else 1.0
    lo, hi = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    return f"diff {sign * row['diff']:+.3g}, 95% CI [{lo:.3g}, {hi:.3g}], Holm p = {row['p_holm']:.2g}"


def _fewer(row: pd.Series, n: int) -> str:
    """``, on only 6 examples`` where a candidate shares fewer examples with the leader than the most."""
    return f", on only {int(row['n'])} examples" if pd.notna(row["n"]) and int(row["n"]) < n else ""


def verdict_lines(comparisons: pd.DataFrame, task: str, metric: str, *, alpha: float = ALPHA) -> list[str]:
    """The verdict in words: which candidates the leader cannot be separated from, and whether it
    beats each expert and baseline (pooled over languages)."""
    rows = comparisons[(comparisons["task"] == task) & (comparisons["metric"] == metric) & (comparisons["language"] == ALL)]
    lead_rows = rows[rows["role"] == "leader"]
    if lead_rows.empty:
        return ["No per-example scores were stored, so no paired comparison: the ranking carries no uncertainty and decides nothing."]
    lead = str(lead_rows["reference"].iloc[0])
    n = int(lead_rows["n"].max())
    tests = " / ".join(sorted(set(lead_rows["test"]) - {"none"})) or "none"
    same = lead_rows[lead_rows["verdict"].isin(["indistinguishable", "undetermined"])]
    worse = lead_rows[lead_rows["verdict"] == "worse"]
    better = lead_rows[lead_rows["verdict"] == "better"]  # possible for a ratio: the leader is by mean over languages
    fewest = int(lead_rows["n"].min())
    # After a halving race, a candidate dropped early shares only its first blocks with the leader.
    shared = f"the same {n} examples" if fewest == n else f"the examples each shares with it ({fewest} to {n}: a candidate dropped early by halving has fewer)"
    intro = (f"Paired comparison with `{lead}` on {shared} ({tests}; 95% paired intervals{' (Newcombe score intervals for 0/1 scores)' if 'mcnemar' in tests else ''}; "
             f"p-values Holm-adjusted across the {len(lead_rows)} other candidates, alpha = {alpha}).")
    lines = [intro]
    if fewest < 10 and tests != "mcnemar":  # Newcombe's score interval (0/1 scores) is not bounded by the data this way
        lines.append(
            f"With {fewest} examples a bootstrap interval understates the uncertainty (it cannot be wider than the observed "
            "differences) and the permutation test cannot reach small p-values: the verdict follows the test, not the interval."
        )
    if same.empty and better.empty:
        lines.append(f"`{lead}` is the winner: every other candidate is significantly worse.")
    if len(same):
        listed = "; ".join(f"`{r['candidate']}` ({_fmt(r)}{_fewer(r, n)})" for _, r in same.iterrows())
        lines.append(f"**Not a clear winner**: statistically indistinguishable from `{lead}` at this sample size: {listed}.")
    if len(better):
        listed = "; ".join(f"`{r['candidate']}` ({_fmt(r)})" for _, r in better.iterrows())
        lines.append(f"**Not a clear winner**: pooled over all examples these are significantly better than `{lead}`: {listed}.")
    if len(worse) and not (same.empty and better.empty):
        lines.append("Significantly worse than it: " + ", ".join(f"`{c}`" for c in worse["candidate"]) + ".")
    others = lead_rows[lead_rows["method"] != SWAP_METHOD]
    said = []
    for _, r in others.iterrows():
        what = {"worse": "beats", "better": "is beaten by", "indistinguishable": "is indistinguishable from",
                "undetermined": "cannot be compared (too few examples) with"}[r["verdict"]]
        said.append(f"{what} the {_role(r['candidate'])} `{r['candidate']}` ({_fmt(r, flip=True)})")
    if said:
        lines.append(f"`{lead}` " + "; ".join(said) + ".")
    return lines
