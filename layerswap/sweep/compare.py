"""Paired comparisons between a sweep's candidates: one test per pair, and the verdict it gives.

Every candidate of a sweep is scored on the same examples, so two candidates are compared example by
example, **each unordered pair once** per task, metric and scope, by one test whose interval is the
set of differences that same test would not reject at the same level (:mod:`layerswap.paired_tests`),
so a verdict never contradicts the interval printed beside it: the exact sign-flip permutation test
inverted for a shift (means: log-likelihoods), Newcombe's paired score interval as the test (0/1
scores: exact match, language fidelity), the paired bootstrap with its p-value from the same
resamples (ratios: bits per byte, each sentence's bits and bytes resampled together).

**One family per task, metric and scope.** Its ``m`` pairs are judged at family-wise ``alpha`` by
Bonferroni: each test at ``level = alpha / m`` with its interval at ``1 - level`` (Holm's step-down has
no interval that agrees with it). The pairs: the leader, the best swap (:mod:`~layerswap.sweep.selection`)
and the base against every other candidate, and every expert and baseline against every other expert and
baseline (pooled over languages; per language, when the sweep has several, the leader and the best swap
against the rest: the heatmap's marks).

**The race's verdicts stand.** After halving, a pair the race decided (a candidate eliminated in round
``r`` against that round's leader) keeps the race's verdict, test ``race``: its one-sided bound at the
level the race tested it at, over the examples of that round; it is not tested again and does not count
in the family (the race spent its own alpha: docs/sweep.md states the guarantee of the whole).

Extra per-example metrics a task stores (language and chain-of-thought fidelity of a generative task:
:func:`~layerswap.evaluate.scores.extra_scores`) are compared like the headline, against the same references.

``comparisons.csv`` columns: task, metric, language (``all``: every language's examples pooled; else one
language), reference, role (of the reference: leader, best swap, expert, baseline; ``round leader`` for a
race pair outside the family), candidate, method (the candidate's), diff (candidate minus reference),
ci_low, ci_high (the test's interval at ``1 - level``; one-sided for the race), level, p_value, p_adjusted
(``min(1, p x m)``, so a difference counts exactly when ``p_adjusted <= alpha``; for the race, scaled to its
alpha the same way), test (permutation, newcombe, bootstrap, race, none), n (examples compared), verdict
(better, worse, indistinguishable: the candidate against the reference; ``undetermined`` below two
examples), examples_needed (examples at which the observed difference would be detected with 80% power
at the same level: :func:`layerswap.power.examples_needed`, on per-example scores, for a ratio the
per-sentence ratios; ``inf`` for no difference), nonfinite_examples (example pairs left out because a
score is NaN or infinite, e.g. a candidate whose weights overflow; also warned about), eliminated_in_round
(the race's round in which it eliminated one of the two; empty otherwise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from layerswap.evaluate.tasks import higher_is_better
from layerswap.sweep.selection import ALL, EXPERTS, SWAP_METHOD, Decisions, decide

if TYPE_CHECKING:
    from layerswap.sweep.race import HalvingResult

ALPHA = 0.05
#: The power at which ``examples_needed`` is computed.
POWER = 0.8
RACE = "race"
#: The base model's candidate: every swap is compared with it (does merging help at all?).
BASE = "base"
COMPARISON_COLUMNS = [
    "task", "metric", "language", "reference", "role", "candidate", "method",
    "diff", "ci_low", "ci_high", "level", "p_value", "p_adjusted", "test", "n", "verdict",
    "examples_needed", "nonfinite_examples", "eliminated_in_round",
]
_FLIP = {"better": "worse", "worse": "better"}


def _finite(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[np.isfinite(frame[columns].to_numpy(dtype=np.float64)).all(axis=1)]


def _shared(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, bool, int]:
    """The examples ``a`` and ``b`` share with finite scores (and bits and bytes, for a ratio), whether
    it is a ratio, and how many shared examples were left out as NaN or infinite."""
    merged = a.merge(b, on=["lang", "id"], suffixes=("_a", "_b"))
    m = _finite(merged, ["score_a", "score_b"])
    cols = ["num_a", "den_a", "num_b", "den_b"]
    ratio = bool(len(m)) and all(c in m for c in cols) and bool(m[cols].notna().all().all())
    if ratio:
        m = _finite(m, cols)
    return m, ratio, len(merged) - len(m)


def _test(m: pd.DataFrame, ratio: bool, level: float) -> dict[str, Any]:
    """The pair's one test at ``level`` and the examples its observed difference would need."""
    from layerswap.paired_tests import paired_ratio_test, paired_test
    from layerswap.power import examples_needed

    if ratio:
        t = paired_ratio_test(m["num_a"], m["den_a"], m["num_b"], m["den_b"], level=level)
    else:
        t = paired_test(m["score_a"].to_numpy(), m["score_b"].to_numpy(), level=level)
    needed = examples_needed(m["score_a"].to_numpy(), m["score_b"].to_numpy(), level=level, power=POWER) if len(m) >= 2 else math.nan
    return {"diff": t.diff, "ci_low": t.low, "ci_high": t.high, "level": level, "p_value": t.p_value,
            "test": t.test, "n": t.n, "reject": t.reject, "examples_needed": needed}


def _verdict(row: dict[str, Any], metric: str) -> str:
    if row["test"] == "none" or row["n"] < 2:
        return "undetermined"
    if not row["reject"]:
        return "indistinguishable"
    return "better" if (row["diff"] > 0) == higher_is_better(metric) else "worse"


def _role(name: str) -> str:
    return "expert" if name in EXPERTS else "baseline"


def race_verdicts(race: HalvingResult) -> dict[frozenset[str], dict[str, Any]]:
    """The pairs the race decided: per eliminated candidate, its round's leader, the one-sided
    interval of the candidate minus the leader (metric's own sign) and the level it was tested at."""
    sign = 1.0 if race.plan.higher_is_better else -1.0
    out: dict[frozenset[str], dict[str, Any]] = {}
    for dec in race.rounds:
        for row in dec.rows:
            if row.get("status") != "eliminated":
                continue
            bound = float(row["bound"])  # upper bound of the oriented difference, below 0
            low, high = (-math.inf, bound) if sign > 0 else (-bound, math.inf)
            level, p = float(row["level"]), float(row["p"])
            out[frozenset((row["candidate"], dec.leader))] = {
                "reference": dec.leader, "candidate": row["candidate"], "diff": sign * float(row["diff"]),
                "ci_low": low, "ci_high": high, "level": level, "p_value": p,
                "p_adjusted": min(1.0, p * race.plan.alpha / level), "test": RACE, "n": int(row["n"]),
                "verdict": "worse", "eliminated_in_round": dec.round,
            }
    return out


def _pairs(decision: Any, methods: pd.Series, present: set[str], scope: str) -> list[tuple[str, str, str]]:
    """``(reference, role, candidate)`` for each unordered pair of the family, each once, leader first."""
    lead, swap = (decision.leader, decision.best_swap) if decision is not None else (None, None)
    refs = [(lead, "leader")] + ([(swap, "best swap")] if swap not in (None, lead) else [])
    plain = [str(c) for c, m in methods.items() if m != SWAP_METHOD]
    if scope == ALL:
        refs += [(c, _role(c)) for c in plain if c != lead]
    seen: set[frozenset[str]] = set()
    out = []
    for ref, role in refs:
        if ref is None or ref not in present:
            continue
        for cand in methods.index:
            cand = str(cand)
            key = frozenset((ref, cand))
            if cand == ref or cand not in present or key in seen:
                continue
            if role in ("expert", "baseline") and cand not in plain and ref != BASE:
                continue  # an expert or baseline meets the swaps through the leader, the best swap and the base
            seen.add(key)
            out.append((ref, role, cand))
    return out


def _family(
    pairs: list[tuple[str, str, str]], scoped: dict[str, pd.DataFrame], raced: dict[frozenset[str], dict[str, Any]],
    methods: pd.Series, head: dict[str, Any], metric: str, alpha: float,
) -> list[dict[str, Any]]:
    """Every pair of one family: the race's verdict where it decided the pair, else one test at alpha / m."""
    from layerswap.paired_tests import family_level

    keys = {frozenset((r, c)) for r, _, c in pairs}
    pairs = pairs + [(v["reference"], "round leader", v["candidate"]) for k, v in raced.items() if k not in keys
                     and v["reference"] in scoped and v["candidate"] in scoped]
    shared = {(r, c): _shared(scoped[c], scoped[r]) for r, _, c in pairs}
    tested = [(r, c) for r, _, c in pairs if frozenset((r, c)) not in raced and len(shared[(r, c)][0]) >= 2]
    level = family_level(alpha, len(tested))
    out = []
    for ref, role, cand in pairs:
        m, ratio, left_out = shared[(ref, cand)]
        row = {**head, "reference": ref, "role": role, "candidate": cand, "method": methods[cand], "nonfinite_examples": left_out}
        race = raced.get(frozenset((ref, cand)))
        if race is not None:
            test = _test(m, ratio, race["level"]) if len(m) >= 2 else {"examples_needed": math.nan}
            row.update(race, reference=ref, candidate=cand, examples_needed=test["examples_needed"])
            if race["reference"] != ref:  # the pair is listed the other way round
                row.update(diff=-race["diff"], ci_low=-race["ci_high"], ci_high=-race["ci_low"], verdict="better")
        else:
            test = _test(m, ratio, level)
            row.update(test, p_adjusted=min(1.0, test["p_value"] * len(tested)), verdict=_verdict(test, metric))
            row["eliminated_in_round"] = math.nan
        out.append({k: row.get(k, math.nan) for k in COMPARISON_COLUMNS})
    return out


def _metrics(tasks: Sequence[tuple[str, str]], scores: dict[str, pd.DataFrame | None]) -> list[tuple[str, str, str]]:
    """``(task, metric, key in the scores' task column)``: each headline, then each extra metric stored per example."""
    from layerswap.evaluate.scores import EXTRA_METRICS, extra_key

    stored = set().union(*(set(s["task"]) for s in scores.values() if s is not None)) if scores else set()
    out = []
    for task, metric in tasks:
        out.append((task, metric, task))
        out += [(task, extra, extra_key(task, extra)) for extra in EXTRA_METRICS if extra_key(task, extra) in stored]
    return out


def compare_candidates(
    results: pd.DataFrame,
    scores: dict[str, pd.DataFrame | None],
    tasks: list[tuple[str, str]],
    *,
    alpha: float = ALPHA,
    decisions: Decisions | None = None,
    race: HalvingResult | None = None,
) -> pd.DataFrame:
    """Every pair of the families described in the module docstring, per task, metric and scope.

    The leader and the best swap of each task and scope are ``decisions``' (default: decided on ``results``
    and ``race``); ``race``: a halving sweep's race, whose eliminations on its screen task are verdicts;
    every other pair is compared on the examples both were scored on."""
    decisions = decisions or decide(results, tasks, race)
    methods = results.groupby("candidate", sort=False)["method"].first()
    headline = dict(tasks)
    out: list[dict] = []
    for task, metric, key in _metrics(tasks, scores):
        task_scores = {str(c): s[s["task"] == key] for c, s in scores.items() if s is not None and (s["task"] == key).any()}
        langs = sorted(results.loc[(results["task"] == task) & (results["metric"] == headline[task]), "language"].unique())
        raced = race_verdicts(race) if race is not None and race.plan.task == task and metric == headline[task] else {}
        for scope in [ALL] + (langs if len(langs) > 1 else []):
            scoped = task_scores if scope == ALL else {c: s[s["lang"] == scope] for c, s in task_scores.items()}
            _warn_nonfinite(scoped, task, metric, headline[task], scope)
            pairs = _pairs(decisions.get(task, scope), methods, set(scoped), scope)
            head = {"task": task, "metric": metric, "language": scope}
            out += _family(pairs, scoped, raced if scope == ALL else {}, methods, head, metric, alpha)
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def _warn_nonfinite(scoped: dict[str, pd.DataFrame], task: str, metric: str, headline: str, scope: str) -> None:
    bad = {c: int((~np.isfinite(s["score"].to_numpy(dtype=np.float64))).sum()) for c, s in scoped.items()}
    bad = {c: k for c, k in bad.items() if k}
    if bad:
        warnings.warn(
            f"{task} ({'all languages' if scope == ALL else scope}{'' if metric == headline else ', ' + metric}): NaN or infinite scores of "
            + ", ".join(f"{c} ({k} examples)" for c, k in bad.items())
            + " are left out of their paired comparisons (column 'nonfinite_examples' of comparisons.csv)",
            RuntimeWarning,
            stacklevel=3,
        )


def against(comparisons: pd.DataFrame, task: str, metric: str, reference: str, scope: str = ALL) -> pd.DataFrame:
    """Every pair of ``reference`` on ``task``/``metric`` in ``scope``, read as candidate minus ``reference``
    (a pair stored the other way round is flipped: its difference, interval and verdict), one row per candidate."""
    rows = comparisons[(comparisons["task"] == task) & (comparisons["metric"] == metric) & (comparisons["language"] == scope)]
    mine = rows[rows["reference"] == reference]
    other = rows[rows["candidate"] == reference].copy()
    if len(other):
        other["candidate"], other["reference"] = other["reference"], reference
        other["diff"] = -other["diff"]
        other["ci_low"], other["ci_high"] = -other["ci_high"], -other["ci_low"]
        other["verdict"] = other["verdict"].map(lambda v: _FLIP.get(v, v))
        other["role"] = "flipped"
        other["method"] = other["candidate"].map(dict(zip(rows["candidate"], rows["method"], strict=True)))
    return pd.concat([mine, other]).reset_index(drop=True) if len(other) else mine.reset_index(drop=True)


def eliminated(comparisons: pd.DataFrame, task: str) -> pd.DataFrame:
    """The race's verdicts on ``task``, read as the eliminated candidate minus its round's leader."""
    rows = comparisons[(comparisons["task"] == task) & (comparisons["test"] == RACE) & (comparisons["language"] == ALL)]
    flip = rows["verdict"] == "better"
    out = rows.copy()
    out.loc[flip, ["candidate", "reference"]] = rows.loc[flip, ["reference", "candidate"]].to_numpy()
    out.loc[flip, "diff"] = -rows.loc[flip, "diff"]
    out.loc[flip, ["ci_low", "ci_high"]] = -rows.loc[flip, ["ci_high", "ci_low"]].to_numpy()
    out.loc[flip, "verdict"] = "worse"
    return out.reset_index(drop=True)


def compared_leader(comparisons: pd.DataFrame, task: str, metric: str, scope: str = ALL) -> str | None:
    """The leader (the decisions' own) whose pairs ``comparisons`` holds for ``task``/``metric`` in ``scope``."""
    rows = comparisons[(comparisons["task"] == task) & (comparisons["metric"] == metric) & (comparisons["language"] == scope)
                       & (comparisons["role"] == "leader")]
    return None if rows.empty else str(rows["reference"].iloc[0])
