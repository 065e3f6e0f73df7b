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
from layerswap.evaluate.tasks import get_task
from layerswap.io import write_text_atomic
from layerswap.merge.methods.identity import identity_merge
from layerswap.progress import bar
from layerswap.sweep.candidates import build_candidates, merge_config_for
from layerswap.sweep.config import Candidate, SweepConfig
from layerswap.sweep.store import RESULT_COLUMNS, ResultStore, rows_for, settings_key

if TYPE_CHECKING:
    from layerswap.merge.config import MergeConfig

MergeFn = Callable[[Candidate], float]
EvalFn = Callable[[Candidate], pd.DataFrame]


def run_candidates(
    candidates: list[Candidate],
    store: ResultStore,
    merge_into_model: MergeFn,
    evaluate_model: EvalFn,
) -> pd.DataFrame:
    """Merge and evaluate each candidate not yet stored; return all rows as a DataFrame.

    ``merge_into_model(candidate)`` puts the candidate's weights into the evaluated model and
    returns the seconds it took; ``evaluate_model(candidate)`` returns a summary with the columns
    ``task, language, metric, value``. Both are injected so the loop is testable on its own.
    """
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
            summary = evaluate_model(cand)
            eval_seconds = time.perf_counter() - t0
            new = rows_for(cand, summary, eval_seconds=eval_seconds, merge_seconds=merge_seconds)
            store.save(cand, new)
            rows += new
            progress.update(1)
    finally:
        progress.close()
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


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

    def evaluate_model(self, cand: Candidate) -> pd.DataFrame:
        from layerswap.evaluate import evaluate

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
        return tidy_summary(result.summary)

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


def write_report(results: pd.DataFrame, config: SweepConfig, n_candidates: int, out: Path) -> dict[str, Any]:
    """Select the winner, draw the figures and write ``report.md``; returns what was written."""
    from layerswap.sweep.report import report_markdown, select, write_figures

    task = config.select or config.tasks[0]
    selection = select(results, task, get_task(task).metric)
    figures = write_figures(results, out / "figures", [(t, get_task(t).metric) for t in config.tasks])
    notes = [f"{n_candidates} candidates, each merged in memory into one loaded model (no model folder per candidate)."]
    overhead = merge_overhead(results)
    if overhead:
        notes.append(
            "Merge time as a share of the candidate's evaluation time: "
            + "; ".join(f"{method} up to {share:.1%}" for method, share in overhead.items())
            + "."
        )
    write_text_atomic(out / "report.md", report_markdown(results, selection, figures, root=out, notes=notes))
    return {"results": results, "selection": selection, "figures": figures, "report": out / "report.md", "overhead": overhead}


def run_sweep(config: SweepConfig, out: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge every candidate in memory into one loaded model, evaluate it, store, plot and report.

    Returns a dict with the results DataFrame, the :class:`~layerswap.sweep.report.Selection` and
    the paths written. Rerunning with the same config and ``out`` resumes where it stopped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.yaml", dump_config(config))
    config = resolve_models(config)
    sweep = InMemorySweep(config, log=log)
    store = ResultStore(out, settings_key(config))
    results = run_candidates(sweep.candidates, store, sweep.merge_into_model, sweep.evaluate_model)
    write_text_atomic(out / "results.csv", results.to_csv(index=False))
    written = write_report(results, config, len(sweep.candidates), out)
    selection = written["selection"]
    if config.save_best:
        written["best_model"] = out / "best-model"
        sweep.save(selection.winner, written["best_model"])
    log(f"winner {selection.winner} ({selection.task} {selection.metric} = {selection.value:.4g}); report: {out / 'report.md'}")
    return written
