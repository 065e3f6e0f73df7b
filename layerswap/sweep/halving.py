"""Successive halving (racing) over a sweep's candidates on the screen task.

Every candidate is scored on the first block of examples; a candidate whose paired upper confidence
bound against the round's leader lies below zero is dropped; the survivors are scored on the next
block (the same fixed example order for all, so every comparison stays paired and earlier scores are
reused); the race stops when one candidate is left, the survivors are indistinguishable on all the
examples allowed (``max_examples``, or the data runs out), the next round would overspend the
budget of example-evaluations, or no further round can be expected to separate the survivors: even the
pair of survivors the fewest examples would tell apart needs more than ``max_examples`` per language to
detect an optimistic version of its difference (the observed one moved 1.96 standard errors away from 0;
:func:`~layerswap.power.examples_needed` at 80% power and the race's level, two-sided
``alpha / rounds``; :func:`~layerswap.sweep.race_stats.closest_pair`), and the round's decision says so.

The work is explicit: a round is a list of :class:`Unit` (candidate x block), enumerated in one place
(:func:`round_units`), and a round ends in one place (:func:`end_round`), whose decision is a pure
function of the scores as stored (:func:`decide`). So a killed race rerun with the same command
reuses every stored unit and takes identical decisions; and the units of a round can be shared out
among processes (:func:`shard`) with a barrier before :func:`end_round`, which every process may
compute (each gets the same answer) or one writes. The race's data (plan, units, decisions, result) is
:mod:`~layerswap.sweep.race`.

**The statistics of an elimination.** In round ``r`` every survivor has the same examples. For each
survivor ``c`` other than the leader ``L`` (the best mean), the per-example differences
``d_i = s_c,i - s_L,i`` (sign flipped for a lower-is-better metric, so ``d < 0`` means worse) give the
mean ``d``, its standard error ``se`` and the one-sided upper bound ``d + t_{1-a}(n-1) * se``
(Student's t); when both candidates' scores are all 0 or 1, the exact sign test on the examples where
they differ and its Clopper-Pearson bound instead (:func:`~layerswap.sweep.race_stats.binary_bound`:
Student's t is anti-conservative on 0/1 differences at the race's small levels). ``c`` is dropped when
that bound lies below zero. Multiplicity: the race may look at
the data once per round, so the family-wise error ``alpha`` is split evenly over the rounds, and over
the two directions a comparison can take, since the leader is chosen from the same data (of two tied
candidates either may lead and drop the other): ``alpha_r = alpha / (2 rounds)``, Bonferroni (a union
bound over the looks and directions holds whoever leads); within a round the ``m`` comparisons with the
leader are Holm-corrected (step-down: the ``k``-th smallest one-sided p-value is tested at
``alpha_r / (m - k)``; the bound reported for each candidate is at the level it was tested at). The
probability that a best candidate (tied or not) is ever dropped is then at most about ``alpha`` (exact for 0/1 scores; otherwise
the t approximation of the mean of paired differences; for a ratio metric such as bits per byte the
per-example ratios are compared, an approximation of the ratio of sums).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerswap.io import write_text_atomic
from layerswap.io.stored import check_unit_record, parse_stored_scores
from layerswap.stats import is_binary
from layerswap.sweep.config import Candidate
from layerswap.sweep.race import (
    BUDGET,
    DATA_END,
    FULL_SET,
    NO_SEPARATION,
    ONE_LEFT,
    HalvingPlan,
    HalvingResult,
    RoundDecision,
    Unit,
    round_units,
    separation_note,
    shard,
)
from layerswap.sweep.race_stats import aligned, closest_pair, paired_bound
from layerswap.sweep.resume import ResumeKey, as_key, resume_line, reusable_record
from layerswap.sweep.shard import Shard
from layerswap.sweep.store import read_scores, scores_csv

#: ``evaluate_block(candidate, unit)``: the candidate's per-example scores (``task, lang, id, score[,
#: num, den]``) on the unit's examples (positions ``unit.start`` to ``unit.stop`` of each language, in
#: the screen task's fixed order). Fewer rows than asked for means the data has ended.
BlockFn = Callable[[Candidate, "Unit"], pd.DataFrame]


class UnitStore:
    """Per unit a JSON (``DIR/units/CANDIDATE.START-STOP.json``, atomic) holding its scores as CSV text;
    per round the decision (``DIR/round-R.json``). A unit is reused only when the candidate's merge
    and the resume key (:mod:`~layerswap.sweep.resume`: settings and inputs' contents) are unchanged."""

    def __init__(self, folder: Path, key: ResumeKey | str) -> None:
        self.dir = folder
        self.units = folder / "units"
        self.units.mkdir(parents=True, exist_ok=True)
        self.key = as_key(key)

    def _path(self, unit: Unit) -> Path:
        return self.units / f"{unit.name}.json"

    def _read(self, candidate: Candidate, unit: Unit) -> tuple[dict[str, Any] | None, list[str]]:
        """The one load path: the unit's record when it may be reused, else None and what changed."""
        path = self._path(unit)
        fix = f"delete {path} to evaluate it again"
        record, why = reusable_record(path, root=self.units, fix=fix, fingerprint=candidate.fingerprint(), key=self.key)
        if record is None:
            return None, why
        check_unit_record(record, asdict(unit), path, fix)
        parse_stored_scores(record["scores"], path, read=read_scores, fix=fix)
        return record, []

    def load(self, candidate: Candidate, unit: Unit) -> tuple[pd.DataFrame, float, float] | None:
        record = self._read(candidate, unit)[0]
        if record is None:
            return None
        return read_scores(record["scores"]), float(record.get("seconds", 0.0)), float(record.get("merge_seconds", 0.0))

    def status(self, units: Sequence[Unit], candidates: dict[str, Candidate]) -> tuple[int, dict[str, list[str]]]:
        """How many of ``units`` are stored for reuse, and per stale unit what changed."""
        stored, stale = 0, {}
        for unit in units:
            record, why = self._read(candidates[unit.candidate], unit)
            stored += record is not None
            if why:
                stale[unit.name] = why
        return stored, stale

    def save(self, candidate: Candidate, unit: Unit, scores: pd.DataFrame, seconds: float, merge_seconds: float) -> None:
        record = {
            "fingerprint": candidate.fingerprint(),
            **self.key.record(),
            "unit": asdict(unit),
            "seconds": round(seconds, 3),
            "merge_seconds": round(merge_seconds, 4),
            "scores": scores_csv(scores),
        }
        write_text_atomic(self._path(unit), json.dumps(record, indent=1))

    def save_round(self, decision: RoundDecision, plan: HalvingPlan) -> None:
        write_text_atomic(
            self.dir / f"round-{decision.round}.json",
            json.dumps({"plan": plan.key(), **decision.as_dict()}, indent=1, default=float),
        )


def decide(
    plan: HalvingPlan, round_: int, entered: Sequence[str], scores: dict[str, pd.DataFrame], spent: int, data_ended: bool
) -> RoundDecision:
    """The round's verdict from the scores alone (deterministic): the leader, each candidate's paired
    bound against it, who is dropped (Holm within the round at ``alpha / rounds``) and whether to stop."""
    sign = 1.0 if plan.higher_is_better else -1.0
    matrix, _ = aligned(scores, entered)
    finite = np.isfinite(matrix).all(axis=1) if matrix.size else np.zeros(0, dtype=bool)
    matrix = matrix[finite] if matrix.size else matrix
    n = int(matrix.shape[0])
    means = sign * matrix.mean(axis=0) if n else np.full(len(entered), -np.inf)
    lead_i = int(np.argmax(np.where(np.isnan(means), -np.inf, means)))
    leader = entered[lead_i]
    diffs = {
        name: sign * (matrix[:, i] - matrix[:, lead_i]) if n else np.zeros(0) for i, name in enumerate(entered) if i != lead_i
    }
    # 0/1 scores on both sides: the exact sign test (race_stats.binary_bound), else Student's t.
    binary = {name: n > 0 and is_binary(matrix[:, i]) and is_binary(matrix[:, lead_i]) for i, name in enumerate(entered) if i != lead_i}
    pvals = {name: paired_bound(d, plan.alpha_round, binary=binary[name])[3] for name, d in diffs.items()}
    order = sorted(diffs, key=lambda c: (math.inf if math.isnan(pvals[c]) else pvals[c], entered.index(c)))
    dropped: set[str] = set()
    stats: dict[str, tuple[float, float, float, float, float]] = {}
    holding = False  # Holm step-down: once one comparison holds, every later (larger p) one holds too
    for k, name in enumerate(order):
        level = plan.alpha_round / (len(order) - k)
        mean, se, bound, p = paired_bound(diffs[name], level, binary=binary[name])
        stats[name] = (mean, se, bound, p, level)
        if not holding and bound == bound and bound < 0:
            dropped.add(name)
        else:
            holding = True
    rows = []
    for i, name in enumerate(entered):
        mean_raw = float(matrix[:, i].mean()) if n else math.nan
        if name == leader:
            rows.append(
                {
                    "candidate": name,
                    "n": n,
                    "mean": mean_raw,
                    "diff": 0.0,
                    "se": 0.0,
                    "bound": 0.0,
                    "level": math.nan,
                    "p": math.nan,
                    "status": "leader",
                }
            )
            continue
        d, se, bound, p, level = stats[name]
        rows.append(
            {
                "candidate": name,
                "n": n,
                "mean": mean_raw,
                "diff": d,
                "se": se,
                "bound": bound,
                "level": level,
                "p": p,
                "status": "eliminated" if name in dropped else "survives",
            }
        )
    survivors = [c for c in entered if c not in dropped]
    start, stop = plan.span(round_)
    decision = RoundDecision(round_, stop, leader, list(entered), survivors, [c for c in entered if c in dropped], rows, spent)
    next_start, next_stop = plan.span(round_ + 1)
    kept = [entered.index(c) for c in survivors]
    decision.closest = closest_pair(matrix, entered, kept, level=plan.separation_level, languages=plan.languages)
    if len(survivors) == 1:
        decision.stop = ONE_LEFT
    elif data_ended:
        decision.stop = DATA_END
    elif next_start >= plan.max_examples:
        decision.stop = FULL_SET
    elif plan.budget is not None and spent + len(survivors) * (next_stop - next_start) * plan.languages > plan.budget:
        decision.stop = BUDGET
    elif decision.closest is not None and decision.closest["needed"] > plan.max_examples:
        decision.stop, decision.note = NO_SEPARATION, separation_note(plan, decision.closest)
    return decision


def end_round(
    plan: HalvingPlan,
    store: UnitStore,
    round_: int,
    entered: Sequence[str],
    candidates: dict[str, Candidate],
    spent_before: int,
    *,
    write: bool = True,
) -> tuple[RoundDecision, dict[str, pd.DataFrame]]:
    """The one place a round ends: read every unit of the round's survivors from the store (this
    round's and earlier ones'), decide, store the decision (``write``: the main process only, so no
    two processes ever write one file). Every process computes the same decision."""
    scores: dict[str, pd.DataFrame] = {}
    spent = spent_before
    data_ended = False
    for name in entered:
        parts = []
        for r in range(round_ + 1):
            unit = Unit(name, r, *plan.span(r))
            loaded = store.load(candidates[name], unit)
            if loaded is None:
                raise RuntimeError(f"unit {unit.name} is not stored: round {round_} cannot end before all its units are done")
            parts.append(loaded[0])
            if r == round_:
                spent += len(loaded[0])
                per_lang = loaded[0].groupby("lang").size()
                # A language with no rows at all in the block has ended too (groupby does not list it).
                data_ended = data_ended or len(per_lang) < plan.languages or int(per_lang.min()) < unit.stop - unit.start
        scores[name] = pd.concat(parts, ignore_index=True)
    decision = decide(plan, round_, entered, scores, spent, data_ended)
    if write:
        store.save_round(decision, plan)
    return decision, scores


def run_units(
    units: Sequence[Unit],
    store: UnitStore,
    candidates: dict[str, Candidate],
    merge: Callable[[Candidate], float],
    evaluate_block: BlockFn,
) -> int:
    """Run the units not stored yet (merge the candidate, score the block, store); returns how many ran."""
    ran = 0
    for unit in units:
        cand = candidates[unit.candidate]
        if store.load(cand, unit) is not None:
            continue
        merge_seconds = merge(cand)
        t0 = time.perf_counter()
        scores = evaluate_block(cand, unit)
        store.save(cand, unit, scores, time.perf_counter() - t0, merge_seconds)
        ran += 1
    return ran


def run_halving(
    candidates: Sequence[Candidate],
    plan: HalvingPlan,
    store: UnitStore,
    merge: Callable[[Candidate], float],
    evaluate_block: BlockFn,
    *,
    log: Callable[[str], None] = print,
    sharding: Shard | None = None,
) -> HalvingResult:
    """Race ``candidates`` on the screen task until one is left, the examples or the budget run out.

    ``merge(candidate)`` puts the candidate into the evaluated model (returns seconds);
    ``evaluate_block(candidate, unit)`` scores it on the unit's examples (:data:`BlockFn`). Both are
    injected, so the race runs on replayed scores too (``benchmarks/bench_halving.py``).

    ``sharding``: this process's place among several (:class:`~layerswap.sweep.shard.Shard`); each
    runs its share of every round's units, all wait for each other, then each reads the whole round
    from the store and takes the same decision (only the main process writes ``round-R.json``)."""
    sharding = sharding or Shard()
    by_name = {c.name: c for c in candidates}
    entered = [c.name for c in candidates]
    rounds: list[RoundDecision] = []
    spent = 0
    scores: dict[str, pd.DataFrame] = {}
    for round_ in range(plan.rounds):
        units = round_units(plan, round_, entered)
        stored, stale = store.status(units, by_name)
        if stored or stale:
            log(f"halving round {round_}: " + resume_line("units", len(units), stored, stale))
        run_units(shard(units, sharding.rank, sharding.world), store, by_name, merge, evaluate_block)
        sharding.wait()  # every unit of the round is stored before anyone ends it
        decision, round_scores = end_round(plan, store, round_, entered, by_name, spent, write=sharding.is_main)
        scores.update(round_scores)
        rounds.append(decision)
        spent = decision.spent
        log(
            f"halving round {round_}: {len(entered)} candidates on {decision.examples} examples per language, leader {decision.leader}; "
            f"dropped {len(decision.eliminated)}" + (f"; stop: {decision.stop_line}" if decision.stop else "")
        )
        if decision.stop:
            break
        entered = decision.survivors
    seconds: dict[str, float] = {}
    merges: dict[str, float] = {}
    for dec in rounds:
        for name in dec.entered:
            loaded = store.load(by_name[name], Unit(name, dec.round, *plan.span(dec.round)))
            if loaded is not None:
                seconds[name] = seconds.get(name, 0.0) + loaded[1]
                merges[name] = max(merges.get(name, 0.0), loaded[2])
    return HalvingResult(plan, rounds, scores, seconds, merges)
