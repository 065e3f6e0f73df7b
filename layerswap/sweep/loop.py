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
from layerswap.evaluate.tasks import TASKS, get_task
from layerswap.io import write_text_atomic
from layerswap.merge.methods.identity import identity_merge
from layerswap.progress import bar
from layerswap.sweep.candidates import build_candidates, merge_config_for
from layerswap.sweep.config import Candidate, SweepConfig
from layerswap.sweep.store import RESULT_COLUMNS, ResultStore, rows_for, settings_key

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
) -> pd.DataFrame:
    """Merge and evaluate each candidate not yet stored; return all rows as a DataFrame.

    ``merge_into_model(candidate)`` puts the candidate's weights into the evaluated model and
    returns the seconds it took; ``evaluate_model(candidate)`` returns a summary with the columns
    ``task, language, metric, value`` and the per-example scores (see :data:`EvalFn`). Both are
    injected so the loop is testable on its own. The scores are stored first and each headline
    metric's standard error and interval computed from them as read back, so a resumed sweep's
    statistics are identical to an uninterrupted one's.
    """
    headline = {task: spec.metric for task, spec in TASKS.items()}
    rows: list[dict[str, Any]] = []
    progress = bar(desc="sweep", total=len(candidates), unit="candidate")
    try:
        for cand in candidates:
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
            new = rows_for(cand, summary, eval_seconds=eval_seconds, merge_seconds=merge_seconds, scores=scores, headline=headline)
            store.save(cand, new, digest)
            rows += new
            progress.update(1)
    finally:
        progress.close()
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    table["n"] = pd.to_numeric(table["n"]).round().astype("Int64")
    return table


def tidy_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The evaluation summary (one row per task and language) as ``task, language, metric, value``."""
    rows = []
    for rec in summary.to_dict("records"):
        task = rec["task"]
        for metric in get_task(task).metrics:
            if metric in rec and rec[metric] is not None:
                rows.append({"task": task, "language": rec.get("lang", ""), "metric": metric, "value": float(rec[metric])})
    return pd.DataFrame(rows, columns=["task", "language", "metric", "value"])


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

        from layerswap.evaluate.runner import load_model
        from layerswap.merge.memory import TensorCache

        self.config = config
        self.experts = {"math": config.math, "lang": config.lang}
        # Everything that can be wrong with the config is found before minutes of loading.
        self.cache = TensorCache(self.experts, config.base, dtype=torch.float32, device="cpu")
        self.num_layers = self.cache.num_layers
        self.candidates = build_candidates(config, self.num_layers)
        log(f"{len(self.candidates)} candidates: {', '.join(c.name for c in self.candidates)}")
        log(f"loading {config.base} once for all candidates")
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

    def evaluate_model(self, cand: Candidate) -> tuple[pd.DataFrame, pd.DataFrame]:
        from layerswap.evaluate import evaluate, example_scores

        c = self.config
        result = evaluate(
            self.lm,
            c.tasks,
            c.languages,
            fmt=c.format,
            shots=c.shots,
            limit=c.limit,
            batch_size=c.batch_size,
            max_new_tokens=c.max_new_tokens,
            data_dir=c.data_dir,
        )
        scores = [example_scores(result.records, task) for task in c.tasks]  # task, lang, id, score[, num, den]
        return tidy_summary(result.summary), pd.concat(scores, ignore_index=True)

    def save(self, name: str, out: Path) -> None:
        """Write candidate ``name`` to disk as a model folder in the loaded model's dtype."""
        from layerswap.merge import merge as merge_to_disk

        winner = next(c for c in self.candidates if c.name == name)
        dtype = str(self.model_dtype).removeprefix("torch.")
        merge_to_disk(self.merge_config(winner).model_copy(update={"dtype": dtype}), out, overwrite=True)


def resolve_models(config: SweepConfig) -> SweepConfig:
    """``config`` with the base and the experts as resolved folders (short names expanded)."""
    from layerswap.io import resolve_model

    return config.model_copy(update={k: str(resolve_model(getattr(config, k))) for k in ("base", "math", "lang")})


def write_report(
    results: pd.DataFrame, config: SweepConfig, n_candidates: int, out: Path, scores: dict[str, pd.DataFrame | None] | None = None
) -> dict[str, Any]:
    """Select the leader, compare the candidates paired (``comparisons.csv``), draw the figures and
    write ``report.md``; returns what was written. ``scores``: each candidate's per-example scores."""
    from layerswap.sweep.compare import compare_candidates
    from layerswap.sweep.report import report_markdown, select, write_figures

    task = config.select or config.tasks[0]
    selection = select(results, task, get_task(task).metric)
    headline = [(t, get_task(t).metric) for t in config.tasks]
    comparisons = compare_candidates(results, scores or {}, headline)
    write_text_atomic(out / "comparisons.csv", comparisons.to_csv(index=False))
    figures = write_figures(results, out / "figures", headline, comparisons)
    notes = [f"{n_candidates} candidates, each merged in memory into one loaded model (no model folder per candidate)."]
    overhead = merge_overhead(results)
    if overhead:
        notes.append(
            "Merge time as a share of the candidate's evaluation time: "
            + "; ".join(f"{method} up to {share:.1%}" for method, share in overhead.items())
            + "."
        )
    write_text_atomic(out / "report.md", report_markdown(results, selection, figures, root=out, notes=notes, comparisons=comparisons))
    return {
        "results": results,
        "selection": selection,
        "comparisons": comparisons,
        "figures": figures,
        "report": out / "report.md",
        "overhead": overhead,
    }


def check_sweep_output(config: SweepConfig, out: str | Path, inputs: Any = ()) -> Path:
    """The sweep's folder, checked before anything is written (:mod:`layerswap.io.outputs`): not an
    input, a new or empty folder or a sweep's own (``sweep.yaml``), its best model layerswap's own.

    The ``sweep.yaml`` the sweep saved in ``out`` is not an input to protect: rerunning from it resumes."""
    from layerswap.io.outputs import check_output, check_replaceable, input_paths, resolved

    saved = resolved(Path(out).expanduser() / "sweep.yaml")
    own = [path for path in input_paths(inputs) if path != saved]
    reads = [config.base, config.math, config.lang, config.data_dir, config.candidates.boundaries, own]
    folder = check_output(out, reads, may_exist=True, resume_marker="sweep.yaml")
    for name in ("figures", "candidates", "best-model"):
        if (folder / name).is_symlink():
            raise InputPathError(f"--out {folder}: {name} is a symbolic link: remove it or choose another folder")
    if config.save_best and (folder / "best-model").exists():
        check_replaceable(folder / "best-model", option="save_best: --out/best-model")
    return folder


def run_sweep(config: SweepConfig, out: str | Path, *, log: Callable[[str], None] = print, inputs: Any = ()) -> dict[str, Any]:
    """Merge every candidate in memory into one loaded model, evaluate it, store, plot and report.

    Returns a dict with the results DataFrame, the :class:`~layerswap.sweep.report.Selection` and
    the paths written. Rerunning with the same config and ``out`` resumes where it stopped. Inputs
    (models, data folder, boundaries file, and ``inputs`` such as the config file) are checked first:
    nothing is written before they are (:func:`check_sweep_output`).
    """
    given = config
    config = resolve_models(config)
    out = check_sweep_output(config, out, inputs)
    sweep = InMemorySweep(config, log=log)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.yaml", dump_config(given))
    store = ResultStore(out, settings_key(config))
    results = run_candidates(sweep.candidates, store, sweep.merge_into_model, sweep.evaluate_model)
    write_text_atomic(out / "results.csv", results.to_csv(index=False))
    scores = {c.name: store.load_scores(c) for c in sweep.candidates}
    written = write_report(results, config, len(sweep.candidates), out, scores)
    selection = written["selection"]
    if config.save_best:
        written["best_model"] = out / "best-model"
        sweep.save(selection.winner, written["best_model"])
    comps = written["comparisons"]
    tied = comps[(comps["role"] == "leader") & (comps["task"] == selection.task) & (comps["language"] == "all") & (comps["verdict"] != "worse")]
    log(
        f"best mean {selection.winner} ({selection.task} {selection.metric} = {selection.value:.4g}); "
        f"{len(tied)} other candidate(s) statistically indistinguishable from it; report: {out / 'report.md'}"
    )
    return written
