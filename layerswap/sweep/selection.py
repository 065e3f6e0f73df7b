"""The one place a sweep decides: the leader, the best layer swap and the best baseline per task and scope.

Every decision is a pure function of the stored results (each candidate's mean per task and language,
``results.csv``) and, after halving, of the race (its survivors alone may lead on the screen task; its
ranking names the best swap when it dropped every swap, and chooses the finalists). The paired
comparisons, the figures, ``report.md``, the demo, the notebooks and the evidence run's ``collect.py``
read these decisions (``decisions.csv`` beside ``results.csv``); none of them chooses again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from layerswap.errors import DataError, InputPathError
from layerswap.evaluate.tasks import higher_is_better
from layerswap.merge.methods.layer_swap import LayerSwap

if TYPE_CHECKING:
    from layerswap.sweep.config import Candidate
    from layerswap.sweep.race import HalvingResult

#: The merge method of a layer-swap candidate (every other candidate is a baseline or an expert).
SWAP_METHOD = LayerSwap.name
#: The scope of a decision pooled over every language.
ALL = "all"
#: The candidates that are one expert alone.
EXPERTS = ("math", "lang")
DECISION_COLUMNS = ["task", "metric", "scope", "leader", "best_swap", "best_swap_dropped", "best_baseline"]


def per_candidate(results: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    """Mean over languages of one (task, metric) per candidate, with its method, swap sizes and interval.

    The interval (``ci_low``, ``ci_high``) is the stored 95% interval with one language; with several,
    mean +- 1.96 x the standard error of the mean over languages (their errors independent).
    """
    rows = results[(results["task"] == task) & (results["metric"] == metric)].copy()
    for col in ("stderr", "ci_low", "ci_high"):
        if col not in rows:
            rows[col] = np.nan
    rows["var"] = rows["stderr"].astype(float) ** 2
    keys = ["candidate", "method", "bottom", "top", "transition", "analysis_score"]
    agg = rows.groupby("candidate", sort=False).agg(
        value=("value", "mean"), langs=("value", "size"), var=("var", "sum"), lo=("ci_low", "first"), hi=("ci_high", "first"),
        **{k: (k, "first") for k in keys[1:]},
    )
    se = np.sqrt(agg["var"].astype(float)) / agg["langs"]
    agg["stderr"] = se.where(rows.groupby("candidate", sort=False)["stderr"].apply(lambda s: s.notna().all()))
    one = agg["langs"] == 1
    agg["ci_low"] = np.where(one, agg["lo"], agg["value"] - 1.96 * agg["stderr"])
    agg["ci_high"] = np.where(one, agg["hi"], agg["value"] + 1.96 * agg["stderr"])
    return agg.drop(columns=["langs", "var", "lo", "hi"]).reset_index()


def _ranked(results: pd.DataFrame, task: str, metric: str, scope: str, among: Sequence[str] | None) -> pd.DataFrame:
    """Candidates by their mean in ``scope`` (best first; ties keep the results' order), with their method."""
    rows = results[(results["task"] == task) & (results["metric"] == metric)]
    if among is not None:
        rows = rows[rows["candidate"].isin(among)]
    if scope != ALL:
        rows = rows[rows["language"] == scope]
    table = rows.groupby("candidate", sort=False).agg(value=("value", "mean"), method=("method", "first")).dropna(subset=["value"])
    return table.sort_values("value", ascending=not higher_is_better(metric), kind="stable")


@dataclass(frozen=True)
class Decision:
    """Who leads on one task and metric in one scope (``all``: the mean over languages, else one language),
    the best layer swap (the leader when a swap leads) and the best baseline other than the leader."""

    task: str
    metric: str
    scope: str
    leader: str | None
    best_swap: str | None
    #: Halving dropped every swap: the race's ranking (last round entered, then mean) names the best one.
    best_swap_dropped: bool = False
    best_baseline: str | None = None


def decide_scope(
    results: pd.DataFrame, task: str, metric: str, scope: str = ALL, *, among: Sequence[str] | None = None, raced_swap: str | None = None
) -> Decision:
    """The decision on ``task`` in ``scope``: only ``among`` may lead (a halving sweep's survivors on its
    screen task: an eliminated candidate's mean is over fewer examples); ``raced_swap`` is the best swap
    when none of them is a swap."""
    table = _ranked(results, task, metric, scope, among)
    lead = str(table.index[0]) if len(table) else None
    swaps = table.index[table["method"] == SWAP_METHOD]
    others = table.index[(table["method"] != SWAP_METHOD) & (table.index != lead)]
    best_swap, dropped = (str(swaps[0]), False) if len(swaps) else (raced_swap, raced_swap is not None)
    return Decision(task, metric, scope, lead, best_swap, dropped, str(others[0]) if len(others) else None)


@dataclass(frozen=True)
class Decisions:
    """Every decision of a sweep, by (task, scope)."""

    items: tuple[Decision, ...] = ()

    def get(self, task: str, scope: str = ALL) -> Decision | None:
        return next((d for d in self.items if d.task == task and d.scope == scope), None)

    def best_swap(self, task: str, scope: str = ALL) -> str | None:
        found = self.get(task, scope)
        return None if found is None else found.best_swap

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(d) for d in self.items], columns=DECISION_COLUMNS)

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> Decisions:
        def text(v: Any) -> str | None:
            return None if pd.isna(v) else str(v)

        return cls(tuple(
            Decision(str(r["task"]), str(r["metric"]), str(r["scope"]), text(r["leader"]), text(r["best_swap"]),
                     bool(r["best_swap_dropped"]), text(r["best_baseline"]))
            for _, r in table.iterrows()
        ))


def decide(results: pd.DataFrame, tasks: Iterable[tuple[str, str]], race: HalvingResult | None = None) -> Decisions:
    """The decisions on every (task, metric), pooled and (with several languages) per language; after
    halving, the race's survivors alone may lead on its screen task and its ranking names the best swap
    when it dropped every one (the same swap in every language)."""
    among: dict[str, list[str]] = {race.plan.task: race.survivors} if race is not None else {}
    methods = results.groupby("candidate", sort=False)["method"].first()
    raced = [n for n in race.ranking() if methods.get(n) == SWAP_METHOD] if race is not None else []
    out = []
    for task, metric in tasks:
        langs = sorted(results.loc[(results["task"] == task) & (results["metric"] == metric), "language"].unique())
        raced_swap = raced[0] if raced and race is not None and task == race.plan.task else None
        for scope in [ALL] + (langs if len(langs) > 1 else []):
            out.append(decide_scope(results, task, metric, scope, among=among.get(task), raced_swap=raced_swap))
    return Decisions(tuple(out))


DECISIONS_FILE = "decisions.csv"


def read_decisions(folder: str | Path) -> Decisions:
    """The decisions a sweep wrote into ``folder`` (``decisions.csv``)."""
    path = Path(folder) / DECISIONS_FILE
    if not path.is_file():
        raise InputPathError(f"{path} does not exist: rerun the sweep into {folder} (it resumes) to write its decisions")
    return Decisions.from_table(pd.read_csv(path, keep_default_na=True))


@dataclass(frozen=True)
class Selection:
    """The decision task's pooled decision with the values a report states: the winner (the leader),
    the runner-up, the best baseline and the best swap, each with its mean over languages."""

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
    #: The best swap was dropped by halving (its mean may be over fewer examples than the leader's).
    best_swap_dropped: bool = False

    @property
    def margin_over_baseline(self) -> float | None:
        if self.best_baseline_value is None:
            return None
        sign = 1 if higher_is_better(self.metric) else -1
        return sign * (self.value - self.best_baseline_value)

    def comparison(self) -> str:
        """One sentence: the leader's mean against the best baseline's, or, when a baseline leads, the best swap's.

        Means only: whether a margin is real is the paired verdict's call (``compare.verdict_lines``).
        """
        if self.winner_is_baseline:
            if self.best_swap is None:
                return "The leader is a baseline; no layer swap was evaluated."
            if self.best_swap_dropped:
                return (
                    f"The leader is a baseline; halving dropped every layer swap. Best layer swap (the one that lasted "
                    f"longest, then by its mean): `{self.best_swap}` = {self.best_swap_value:.4g} over the examples it was "
                    "scored on (see the paired verdict on the examples it shares with the leader)."
                )
            sign = 1 if higher_is_better(self.metric) else -1
            return (
                f"The leader is a baseline: no layer swap has a better mean. Best layer swap: `{self.best_swap}` = "
                f"{self.best_swap_value:.4g}, {sign * (self.value - self.best_swap_value):.4g} behind (see the paired verdict)."
            )
        if self.best_baseline is None:
            return "No baseline was evaluated."
        return (
            f"Best baseline: `{self.best_baseline}` = {self.best_baseline_value:.4g}; "
            f"margin {self.margin_over_baseline:+.4g} in the leader's favour (see the paired verdict for whether it is real)."
        )


def select(results: pd.DataFrame, task: str, metric: str, decision: Decision | None = None, among: Sequence[str] | None = None) -> Selection:
    """The :class:`Selection` of ``decision`` (default: decided here on ``results``, ``among`` these
    candidates), with each named candidate's mean over languages."""
    decision = decision or decide_scope(results, task, metric, among=among)
    if decision.leader is None:
        raise DataError(f"the sweep has no results for task {task} metric {metric}: check the tasks and the data folder")
    table = per_candidate(results, task, metric).set_index("candidate")
    ranked = _ranked(results, task, metric, ALL, among)
    runner = str(ranked.index[1]) if len(ranked) > 1 else None

    def value(name: str | None) -> float | None:
        return None if name is None or name not in table.index else float(table.loc[name, "value"])

    swap = decision.best_swap if value(decision.best_swap) is not None else None
    return Selection(
        task=task,
        metric=metric,
        winner=decision.leader,
        value=float(table.loc[decision.leader, "value"]),
        runner_up=runner,
        runner_up_value=value(runner),
        best_baseline=decision.best_baseline,
        best_baseline_value=value(decision.best_baseline),
        winner_is_baseline=table.loc[decision.leader, "method"] != SWAP_METHOD,
        best_swap=swap,
        best_swap_value=value(swap),
        best_swap_dropped=decision.best_swap_dropped and swap is not None,
    )


def decide_sweep(
    results: pd.DataFrame, tasks: Sequence[tuple[str, str]], task: str, race: HalvingResult | None = None
) -> tuple[Decisions, Selection]:
    """Every decision of a sweep (:func:`decide`) and the :class:`Selection` on its decision ``task``
    (only the race's survivors may lead or run up on its screen task)."""
    decisions = decide(results, tasks, race)
    metric = dict(tasks)[task]
    among = race.survivors if race is not None and race.plan.task == task else None
    return decisions, select(results, task, metric, decisions.get(task), among=among)


def finalists(race: HalvingResult, candidates: list[Candidate], k: int, always: Sequence[str] = ()) -> list[str]:
    """What the target sees after halving: the last ``k`` survivors (by the race's ranking), the best
    layer swap (when none of those is one: the question is whether a swap beats the rest on the target),
    the experts (``math``, ``lang``), the best baseline (the baseline that lasted longest, then by its
    mean) and the baselines named in ``always`` (``candidates.baselines`` names: ``base``, or a merge
    method such as ``ties``)."""
    ranking = race.ranking()
    chosen = ranking[:k]
    by_name = {c.name: c for c in candidates}
    swaps = [n for n in ranking if by_name[n].method == SWAP_METHOD]
    if swaps and not any(n in chosen for n in swaps):
        chosen.append(swaps[0])
    chosen += [e for e in EXPERTS if e in by_name and e not in chosen]
    baselines = [n for n in ranking if by_name[n].method != SWAP_METHOD and n not in EXPERTS]
    if baselines and baselines[0] not in chosen:
        chosen.append(baselines[0])
    chosen += [c.name for c in candidates if c.source == "baseline" and (c.name in always or c.method in always)]
    return [c.name for c in candidates if c.name in chosen]


@dataclass
class SweepResult:
    """What :func:`~layerswap.sweep.loop.run_sweep` returns: the tables, the decisions and what was written.

    On a process other than the main one of a multi-process sweep only ``results`` and ``halving`` are set
    (the main process decides and writes)."""

    results: pd.DataFrame
    halving: HalvingResult | None = None
    scores: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    decisions: Decisions = field(default_factory=Decisions)
    selection: Selection | None = None
    comparisons: pd.DataFrame | None = None
    figures: dict[str, dict] = field(default_factory=dict)
    report: Path | None = None
    overhead: dict[str, float] = field(default_factory=dict)
    best_model: Path | None = None
