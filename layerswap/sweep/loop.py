"""The merge-then-evaluate loop: candidates merged in memory, evaluated, stored, reported.

Why in memory: writing a model folder per candidate costs as much as a copy of the model; the
sweep instead loads the base and the two experts' tensors once (``TensorCache``), assigns each
candidate's merged tensors into one loaded model, and evaluates it. Each candidate's results go to
the :class:`~layerswap.sweep.store.ResultStore` as soon as they exist, so a rerun resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from layerswap.config import dump_config
from layerswap.errors import InputPathError
from layerswap.evaluate.tasks import get_task
from layerswap.io import write_text_atomic
from layerswap.merge.methods.identity import identity_merge
from layerswap.progress import bar
from layerswap.sweep.candidates import build_candidates, merge_config_for
from layerswap.sweep.config import Candidate, SweepConfig
from layerswap.sweep.halving import HalvingPlan, HalvingResult, Unit, UnitStore, run_halving
from layerswap.sweep.resume import ResumeKey, resume_line, settings_key
from layerswap.sweep.selection import DECISIONS_FILE, SweepResult, decide_sweep, finalists
from layerswap.sweep.shard import Shard
from layerswap.sweep.store import ESTIMATE_COLUMNS, RESULT_COLUMNS, ResultStore, rows_for

if TYPE_CHECKING:
    from layerswap.merge.config import MergeConfig

MergeFn = Callable[[Candidate], float]
#: A summary (``task, language, metric, value``) and the per-example scores (``task, lang, id,
#: score[, num, den]``), or a summary alone (no standard errors, no paired comparisons).
EvalFn = Callable[[Candidate], "tuple[pd.DataFrame, pd.DataFrame | None] | pd.DataFrame"]


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


def tidy_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The evaluation summary (one row per task and language) as ``task, language, metric, value`` and,
    for the task's headline metric, the ``stderr, ci_low, ci_high, n`` its runner computed."""
    rows = []
    for rec in summary.to_dict("records"):
        spec = get_task(rec["task"])
        for metric in spec.metrics:
            if metric in rec and rec[metric] is not None:
                row = {"task": spec.name, "language": rec.get("lang", ""), "metric": metric, "value": float(rec[metric])}
                if metric == spec.metric:
                    row.update({k: rec[k] for k in ESTIMATE_COLUMNS if k in rec})
                rows.append(row)
    return pd.DataFrame(rows, columns=["task", "language", "metric", "value", *ESTIMATE_COLUMNS])


def merge_overhead(results: pd.DataFrame) -> dict[str, float]:
    """Per method, the largest ratio of merge time to evaluation time over its candidates."""
    if results.empty:
        return {}
    per = results.groupby("candidate").agg(method=("method", "first"), m=("merge_time", "first"), t=("time", "sum"))
    per["share"] = per["m"] / per["t"].clip(lower=1e-9)
    return {str(k): float(v) for k, v in per.groupby("method")["share"].max().items()}


class InMemorySweep:
    """One loaded model and the experts' cached tensors: each candidate is merged into the model.

    ``config`` must hold resolved model paths, so :func:`merge_config_for` names the same experts.
    """

    def __init__(self, config: SweepConfig, *, log: Callable[[str], None]) -> None:
        import torch

        from layerswap.evaluate.runner import auto_device, auto_dtype, load_model
        from layerswap.merge.memory import TensorCache

        self.config = config
        self.experts = {"math": config.math, "lang": config.lang}
        # Everything that can be wrong with the config is found before minutes of loading.
        self.cache = TensorCache(self.experts, config.base, dtype=torch.float32, device="cpu")
        self.num_layers = self.cache.num_layers
        self.candidates = build_candidates(config, self.num_layers)
        if config.candidates.search == "halving":
            check_first_round(config, len(self.candidates))
        log(f"{len(self.candidates)} candidates: {', '.join(c.name for c in self.candidates)}")
        log(f"loading {config.base} once for all candidates")
        dev = auto_device(config.device)  # a model memory cannot hold is refused here, not killed while loading
        ref = self.cache.reference.config
        self.cache.check_model_fits(auto_dtype(dev, ref.get("dtype") or ref.get("torch_dtype"), config.dtype), dev)
        self.lm = load_model(config.base, device=config.device, dtype=config.dtype)
        self.model_dtype = next(self.lm.model.parameters()).dtype
        if config.cache_dtype == "model":
            self.cache.dtype = self.model_dtype
        self.cache.preload()

    def merge_config(self, cand: Candidate) -> MergeConfig:
        """The candidate's validated ``MergeConfig`` (an identity is a revert that keeps one model)."""
        from layerswap.merge.config import merge_config

        data = identity_merge(cand.params, self.num_layers) if cand.method == "identity" else merge_config_for(cand, self.config)
        return merge_config({"experts": self.experts, "base": self.config.base, **data})

    def merge_into_model(self, cand: Candidate) -> float:
        from layerswap.merge.memory import apply_merge

        return apply_merge(self.lm.model, self.cache, self.merge_config(cand)).seconds

    def evaluate_model(
        self, cand: Candidate, tasks: list[str] | None = None, *, limit: int | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``cand`` (already merged into the model) on ``tasks`` (default: the sweep's) with the sweep's
        settings (``limit``: examples per task and language instead of the sweep's)."""
        from layerswap.evaluate import evaluate, example_scores

        c = self.config
        tasks = tasks or c.tasks
        result = evaluate(
            self.lm,
            tasks,
            c.languages,
            fmt=c.format,
            shots=c.shots,
            limit=limit if limit is not None else c.limit,
            batch_size=c.batch_size,
            max_new_tokens=c.max_new_tokens,
            data_dir=c.data_dir,
        )
        scores = [example_scores(result.records, task) for task in tasks]  # task, lang, id, score[, num, den]
        return tidy_summary(result.summary), pd.concat(scores, ignore_index=True)

    def evaluate_block(self, cand: Candidate, unit: Unit) -> pd.DataFrame:
        """``cand`` on the screen task's examples ``unit.start`` to ``unit.stop`` of each language.

        A task that scores blocks (``TaskSpec.scores_blocks``: the proxies) is asked for only those
        examples through the registry; any other task is run on the first ``unit.stop`` examples and
        the block's are kept (correct, but the earlier examples are scored again)."""
        from layerswap.evaluate import example_scores
        from layerswap.evaluate.tasks import EvalRequest

        c = self.config
        spec = get_task(c.screen_task())
        if spec.scores_blocks:
            request = EvalRequest(
                langs=tuple(c.languages),
                shots=spec.shots_for(c.shots),
                limit=unit.stop,
                offset=unit.start,
                batch_size=c.batch_size,
                data_dir=c.data_dir,
            )
            return example_scores(spec.run(self.lm, request).records, spec)
        _, scores = self.evaluate_model(cand, [spec.name], limit=unit.stop)
        position = scores.groupby("lang", sort=False).cumcount()
        return scores[(position >= unit.start) & (position < unit.stop)].reset_index(drop=True)

    def save(self, name: str, out: Path) -> None:
        """Write candidate ``name`` to disk as a model folder in the loaded model's dtype."""
        from layerswap.merge import merge as merge_to_disk

        winner = next(c for c in self.candidates if c.name == name)
        dtype = str(self.model_dtype).removeprefix("torch.")
        merge_to_disk(self.merge_config(winner).model_copy(update={"dtype": dtype}), out, overwrite=True)


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
    evaluate_block: Callable[[Candidate, Unit], pd.DataFrame],
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


def _silent(_: str) -> None:
    """The log of a process other than the main one: the main process speaks for all."""


def resolve_models(config: SweepConfig) -> SweepConfig:
    """``config`` with the base and the experts as resolved folders (short names expanded)."""
    from layerswap.io import resolve_model

    return config.model_copy(update={k: str(resolve_model(getattr(config, k))) for k in ("base", "math", "lang")})


def write_report(
    results: pd.DataFrame,
    config: SweepConfig,
    n_candidates: int,
    out: Path,
    scores: dict[str, pd.DataFrame | None] | None = None,
    race: HalvingResult | None = None,
) -> SweepResult:
    """Decide (:mod:`~layerswap.sweep.selection`), compare the candidates paired (``comparisons.csv``),
    draw the figures and write ``decisions.csv`` and ``report.md``; returns the :class:`SweepResult`.
    ``scores``: each candidate's per-example scores; ``race``: the halving rounds (a halving sweep),
    whose survivors alone may lead on the screen task."""
    from layerswap.sweep.compare import compare_candidates
    from layerswap.sweep.report import halving_section, report_markdown, screen_target_section, write_figures

    headline = [(t, get_task(t).metric) for t in config.tasks]
    decisions, selection = decide_sweep(results, headline, config.decision_task(), race)
    comparisons = compare_candidates(results, scores or {}, headline, decisions=decisions)
    write_text_atomic(out / "comparisons.csv", comparisons.to_csv(index=False))
    write_text_atomic(out / DECISIONS_FILE, decisions.table().to_csv(index=False))
    figures = write_figures(results, out / "figures", headline, comparisons, decisions)
    sections: list[str] = []
    if race is not None:
        sections += halving_section(race, n_candidates, out / "figures", root=out)
    screen, target = (race.plan.task if race is not None else config.screen), config.target
    if screen is not None and target is not None and screen != target:
        sections += screen_target_section(results, scores or {}, screen, target, out / "figures", root=out)
    notes = [f"{n_candidates} candidates, each merged in memory into one loaded model (no model folder per candidate)."]
    overhead = merge_overhead(results)
    if overhead:
        notes.append(
            "Merge time as a share of the candidate's evaluation time: "
            + "; ".join(f"{method} up to {share:.1%}" for method, share in overhead.items())
            + "."
        )
    write_text_atomic(
        out / "report.md",
        report_markdown(results, selection, figures, root=out, notes=notes, comparisons=comparisons, sections=sections),
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


def check_sweep_output(config: SweepConfig, out: str | Path, inputs: Any = ()) -> Path:
    """The sweep's folder, checked before anything is written (:mod:`layerswap.io.outputs`): not an
    input, a new or empty folder or a sweep's own (``sweep.yaml``), its best model layerswap's own.

    The ``sweep.yaml`` the sweep saved in ``out`` is not an input to protect: rerunning from it resumes."""
    from layerswap.io.outputs import check_output, check_replaceable, input_paths, resolved

    saved = resolved(Path(out).expanduser() / "sweep.yaml")
    own = [path for path in input_paths(inputs) if path != saved]
    reads = [config.base, config.math, config.lang, config.data_dir, config.candidates.boundaries, own]
    folder = check_output(out, reads, may_exist=True, resume_marker="sweep.yaml")
    for name in ("figures", "candidates", "halving", "finals", "best-model"):
        if (folder / name).is_symlink():
            raise InputPathError(f"--out {folder}: {name} is a symbolic link: remove it or choose another folder")
    if config.save_best and (folder / "best-model").exists():
        check_replaceable(folder / "best-model", option="save_best: --out/best-model")
    return folder


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    inputs: Any = (),
    sharding: Shard | None = None,
) -> SweepResult:
    """Merge every candidate in memory into one loaded model, evaluate it, store, plot and report.

    Returns the :class:`~layerswap.sweep.selection.SweepResult`: the tables, the decisions and the
    paths written. Rerunning with the same config and ``out`` resumes where it stopped. Inputs
    (models, data folder, boundaries file, and ``inputs`` such as the config file) are checked first:
    nothing is written before they are (:func:`check_sweep_output`).

    Under ``accelerate launch`` (``sharding``: by default :meth:`Shard.from_environment`) every
    process checks the inputs and loads the model once, then runs its share of the candidates (or of
    each halving round's units) into the same store; the main process alone creates the folder and
    writes ``sweep.yaml``, the rounds, ``results.csv``, the figures, the report and the best model.
    The other processes return only the results and the race (the same) and log nothing.
    """
    sharding = sharding or Shard.from_environment()
    if not sharding.is_main:
        log = _silent
    given = config
    config = resolve_models(config)
    device = getattr(sharding.state, "device", None)
    if config.device in (None, "auto") and device is not None and device.type != "cpu":
        config = config.model_copy(update={"device": str(device)})  # this process's own GPU (cuda:LOCAL_RANK)
    out = check_sweep_output(config, out, inputs)
    sharding.wait()  # every process has checked the folder before the main one writes into it
    key = settings_key(config)  # the inputs as they are now: a changed expert is evaluated again
    sweep = InMemorySweep(config, log=log)
    if sharding.world > 1:
        log(f"{sharding.world} processes share the candidates ({len(sweep.candidates)} in all)")
    elif Shard.launched_alone():
        log(
            "note: accelerate launch --cpu started one process (on one machine it starts more only through mpirun): "
            "this sweep runs alone; launch with --config_file examples/accelerate/ddp-2.yaml or --multi_gpu --num_processes N"
        )
    if sharding.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "sweep.yaml", dump_config(given))
    sharding.wait()  # the folder exists before any process stores a result in it
    race = None
    if config.candidates.search == "halving":
        results, scores, race = run_halving_sweep(
            config,
            sweep.candidates,
            out,
            sweep.merge_into_model,
            sweep.evaluate_block,
            sweep.evaluate_model,
            key=key,
            log=log,
            sharding=sharding,
        )
    else:
        store = ResultStore(out, key)
        results = run_candidates(sweep.candidates, store, sweep.merge_into_model, sweep.evaluate_model, sharding=sharding, log=log)
        scores = {c.name: store.load_scores(c) for c in sweep.candidates}
    if not sharding.is_main:
        return SweepResult(results=results, halving=race, scores=scores)
    write_text_atomic(out / "results.csv", results.to_csv(index=False))
    written = write_report(results, config, len(sweep.candidates), out, scores, race)
    selection = written.selection
    assert selection is not None and written.comparisons is not None
    if config.save_best:
        written.best_model = out / "best-model"
        sweep.save(selection.winner, written.best_model)
    comps = written.comparisons
    tied = comps[
        (comps["role"] == "leader")
        & (comps["task"] == selection.task)
        & (comps["language"] == "all")
        & (comps["verdict"] != "worse")
    ]
    log(
        f"best mean {selection.winner} ({selection.task} {selection.metric} = {selection.value:.4g}); "
        f"{len(tied)} other candidate(s) statistically indistinguishable from it; report: {out / 'report.md'}"
    )
    return written
