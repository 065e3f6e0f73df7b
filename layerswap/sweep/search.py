"""How a sweep searches its candidates: one interface, one class per strategy.

scikit-learn's ``BaseSearchCV`` is the model: ``fit`` calls ``_run_search``, which grid and successive-halving
search override. Here :func:`~layerswap.sweep.loop.run_sweep` checks, loads and builds the candidates, then
calls :meth:`SearchStrategy.run` of the strategy ``candidates.search`` names, with a :class:`SearchContext`
(the candidates, the store's folder and resume key, and injected ``merge``/``evaluate`` functions); the
strategy evaluates what it chooses and returns a :class:`Search` (the results table, each candidate's
per-example scores, the race if any), from which the selection module decides. ``exhaustive`` evaluates
every candidate on every task; ``halving`` races them on the screen task (:mod:`~layerswap.sweep.halving`)
and evaluates the finalists on the rest. A third strategy (Bayesian optimisation over the swap geometry,
say) is one class registered with :func:`strategy`, and its name in ``SEARCH_MODES``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from layerswap.errors import ConfigError
from layerswap.evaluate.tasks import get_task
from layerswap.io import write_text_atomic
from layerswap.progress import bar
from layerswap.sweep.config import Candidate, SweepConfig
from layerswap.sweep.halving import BlockFn, UnitStore, run_halving
from layerswap.sweep.race import HalvingPlan, HalvingResult
from layerswap.sweep.resume import ResumeKey, resume_line, settings_key
from layerswap.sweep.selection import finalists
from layerswap.sweep.shard import Shard
from layerswap.sweep.store import ESTIMATE_COLUMNS, RESULT_COLUMNS, ResultStore, rows_for

MergeFn = Callable[[Candidate], float]
#: A summary (``task, language, metric, value``) and the per-example scores (``task, lang, id,
#: score[, num, den]``), or a summary alone (no standard errors, no paired comparisons).
EvalFn = Callable[[Candidate], "tuple[pd.DataFrame, pd.DataFrame | None] | pd.DataFrame"]


#: ``evaluate(candidate, tasks)``: the candidate (merged into the model) on ``tasks``, as :data:`EvalFn`.
TasksFn = Callable[[Candidate, list[str]], Any]


@dataclass
class SearchContext:
    """What a strategy works with: the sweep's config and candidates, where and under which key it
    stores, and the injected merge and evaluation (so a strategy runs on replayed scores too)."""

    config: SweepConfig
    candidates: list[Candidate]
    out: Path
    key: ResumeKey
    merge: MergeFn
    evaluate: TasksFn
    evaluate_block: BlockFn
    log: Callable[[str], None] = print
    sharding: Shard = field(default_factory=Shard)


@dataclass
class Search:
    """What a strategy returns: the results table, each candidate's per-example scores, the race if any."""

    results: pd.DataFrame
    scores: dict[str, pd.DataFrame | None]
    race: HalvingResult | None = None


class SearchStrategy:
    """One way to search a sweep's candidates. Subclass, set ``name``, override :meth:`run`."""

    name: ClassVar[str]

    def check(self, config: SweepConfig, n_candidates: int) -> None:
        """Refuse, before any model loads, a config this strategy cannot run with ``n_candidates``."""

    def run(self, ctx: SearchContext) -> Search:
        raise NotImplementedError(f"search strategy {self.name} defines no run")


#: Registered strategies by name (``candidates.search``).
STRATEGIES: dict[str, SearchStrategy] = {}


def strategy(cls: type[SearchStrategy]) -> type[SearchStrategy]:
    """Class decorator: register a search strategy under its ``name``."""
    if cls.name in STRATEGIES:
        raise ValueError(f"search strategy {cls.name!r} is registered twice")
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> SearchStrategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown search mode {name!r}: valid modes are {', '.join(STRATEGIES)}") from None


@strategy
class Exhaustive(SearchStrategy):
    """Every candidate on every task and example."""

    name = "exhaustive"

    def run(self, ctx: SearchContext) -> Search:
        store = ResultStore(ctx.out, ctx.key)
        tasks = ctx.config.tasks
        results = run_candidates(ctx.candidates, store, ctx.merge, lambda c: ctx.evaluate(c, tasks), sharding=ctx.sharding, log=ctx.log)
        return Search(results, {c.name: store.load_scores(c) for c in ctx.candidates})


@strategy
class Halving(SearchStrategy):
    """Successive halving on the screen task, then the finalists on the other tasks."""

    name = "halving"

    def check(self, config: SweepConfig, n_candidates: int) -> None:
        check_first_round(config, n_candidates)

    def run(self, ctx: SearchContext) -> Search:
        results, scores, race = run_halving_sweep(
            ctx.config, ctx.candidates, ctx.out, ctx.merge, ctx.evaluate_block, ctx.evaluate,
            key=ctx.key, log=ctx.log, sharding=ctx.sharding,
        )
        return Search(results, scores, race)


def run_candidates(
    candidates: list[Candidate],
    store: ResultStore,
    merge_into_model: MergeFn,
    evaluate_model: EvalFn,
    *,
    sharding: Shard | None = None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Merge and evaluate each candidate not yet stored; return all rows as a DataFrame.

    ``merge_into_model(candidate)`` puts the candidate's weights into the evaluated model and
    returns the seconds it took; ``evaluate_model(candidate)`` returns a summary with the columns
    ``task, language, metric, value`` and the per-example scores (see :data:`EvalFn`). Both are
    injected so the loop is testable on its own. The scores are stored first, then the rows with
    each headline metric's value and interval as the task reported them.

    ``sharding``: this process's place among several (:class:`~layerswap.sweep.shard.Shard`): it runs
    every ``world``-th candidate, waits for the others, then reads every candidate's rows from the
    store, so each process returns the same table as one process alone would.

    ``log``: where a resumed run says what it reuses and what it evaluates again (and why).
    """
    sharding = sharding or Shard()
    rows: list[dict[str, Any]] = []
    mine = sharding.mine(candidates)
    if log is not None:
        stored, stale = store.status(candidates)
        if stored or stale:
            log(resume_line("candidates", len(candidates), stored, stale))
    progress = _bar(sharding, "sweep", len(mine), "candidate")
    try:
        for cand in mine:
            done = store.load(cand)
            if done is not None:
                rows += done
                progress.update(1)
                continue
            progress.set_postfix_str(cand.name)
            merge_seconds = merge_into_model(cand)
            t0 = time.perf_counter()
            evaluated = evaluate_model(cand)
            eval_seconds = time.perf_counter() - t0
            summary, scores = evaluated if isinstance(evaluated, tuple) else (evaluated, None)
            digest = None
            if scores is not None:
                scores, digest = store.save_scores(cand, scores)
            new = rows_for(cand, summary, eval_seconds=eval_seconds, merge_seconds=merge_seconds, scores=scores)
            store.save(cand, new, digest)
            rows += new
            progress.update(1)
    finally:
        progress.close()
    if sharding.world > 1:
        sharding.wait()  # every candidate is stored: read them all, in the candidates' order
        rows = []
        for cand in candidates:
            done = store.load(cand)
            if done is None:
                raise RuntimeError(f"candidate {cand.name} is not stored after every process finished its share")
            rows += done
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    table["n"] = pd.to_numeric(table["n"]).round().astype("Int64")
    return table


def _bar(sharding: Shard, desc: str, total: int, unit: str) -> Any:
    """A progress bar on the main process (labelled with its share when there are several); none elsewhere."""
    if not sharding.is_main:
        from tqdm import tqdm

        return tqdm(total=total, disable=True)
    label = desc if sharding.world == 1 else f"{desc} ({sharding.describe()}, its share)"
    return bar(desc=label, total=total, unit=unit)


def halving_plan(config: SweepConfig) -> HalvingPlan:
    """The race's settings from a halving sweep's config (screen task, block, budgets, alpha)."""
    spec = config.candidates.halving
    task = config.screen_task()
    most = config.screen_examples()
    assert most is not None  # check_search refuses a halving sweep without a bound
    return HalvingPlan(
        task=task,
        block=spec.block,
        max_examples=most,
        languages=len(config.languages),
        budget=spec.budget,
        alpha=spec.alpha,
        higher_is_better=get_task(task).higher_is_better,
    )


def check_first_round(config: SweepConfig, n_candidates: int) -> None:
    """A budget that cannot pay for the first round (every candidate on one block) is refused before any loading."""
    from layerswap.errors import ConfigError

    plan = halving_plan(config)
    first = n_candidates * (plan.span(0)[1] - plan.span(0)[0]) * plan.languages
    if plan.budget is not None and plan.budget < first:
        raise ConfigError(
            f"candidates.halving.budget {plan.budget} cannot pay for the first round ({n_candidates} candidates x {plan.block} examples x "
            f"{plan.languages} language(s) = {first}): raise the budget, lower the block or evaluate fewer candidates"
        )


def screen_summary(scores: pd.DataFrame, task: str) -> pd.DataFrame:
    """The headline metric per language with its interval, as the task aggregates per-example scores."""
    spec = get_task(task)
    rows = [
        {"task": task, "language": str(lang), "metric": spec.metric, **spec.aggregate(sub, lang=str(lang))}
        for lang, sub in scores.groupby("lang", sort=False)
    ]
    return pd.DataFrame(rows, columns=["task", "language", "metric", "value", *ESTIMATE_COLUMNS])


def run_halving_sweep(
    config: SweepConfig,
    candidates: list[Candidate],
    out: Path,
    merge_into_model: MergeFn,
    evaluate_block: BlockFn,
    evaluate_tasks: Callable[[Candidate, list[str]], Any],
    *,
    key: ResumeKey | None = None,
    log: Callable[[str], None] = print,
    sharding: Shard | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame | None], HalvingResult]:
    """Halving on the screen task, then the finalists on the other tasks (the target first).

    The race's units and rounds go to ``out/halving`` (:class:`~layerswap.sweep.halving.UnitStore`), the
    finalists' results to ``out/finals`` (:class:`~layerswap.sweep.store.ResultStore`): a rerun resumes
    both and ends with identical results. Returns the results table (screen rows for every candidate,
    over the examples it was scored on; other tasks for the finalists), each candidate's per-example
    scores, and the race. ``sharding``: the race's units and the finalists are shared out among
    processes (:func:`~layerswap.sweep.halving.run_halving`, :func:`run_candidates`); every process
    returns the same, and only the main one writes ``rounds.csv`` and the rounds. ``key``: the sweep's
    resume key (default: taken here), narrowed to the screen's and the finals' settings."""
    sharding = sharding or Shard()
    key = key or settings_key(config)
    plan = halving_plan(config)
    unit_key = key.for_settings(config.model_copy(update={"tasks": [plan.task], "limit": None}))
    race = run_halving(
        candidates, plan, UnitStore(out / "halving", unit_key), merge_into_model, evaluate_block, log=log, sharding=sharding
    )
    if sharding.is_main:
        write_text_atomic(out / "halving" / "rounds.csv", race.table().to_csv(index=False))
    rows: list[dict[str, Any]] = []
    scores: dict[str, pd.DataFrame | None] = {}
    for cand in candidates:
        own = race.scores.get(cand.name)
        if own is None:
            continue
        rows += rows_for(
            cand,
            screen_summary(own, plan.task),
            eval_seconds=race.seconds.get(cand.name, 0.0),
            merge_seconds=race.merge_seconds.get(cand.name, 0.0),
        )
        scores[cand.name] = own
    rest = [t for t in ([config.target] if config.target else []) + config.tasks if t != plan.task]
    rest = list(dict.fromkeys(rest))
    if rest:
        chosen = finalists(race, candidates, config.finalists, config.final_baselines)
        log(f"finalists on {', '.join(rest)}: {', '.join(chosen)}")
        store = ResultStore(out / "finals", key.for_settings(config.model_copy(update={"tasks": rest})))
        final = run_candidates(
            [c for c in candidates if c.name in chosen],
            store,
            merge_into_model,
            lambda c: evaluate_tasks(c, rest),
            sharding=sharding,
            log=log,
        )
        rows += final.to_dict("records")
        for cand in candidates:
            if cand.name in chosen:
                more = store.load_scores(cand)
                if more is not None:
                    scores[cand.name] = pd.concat([s for s in (scores.get(cand.name), more) if s is not None], ignore_index=True)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    table["n"] = pd.to_numeric(table["n"]).round().astype("Int64")
    return table, scores, race


