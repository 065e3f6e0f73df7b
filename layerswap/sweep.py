"""The merge-then-evaluate loop: candidates merged in memory, evaluated, stored, reported.

Why in memory: writing a model folder per candidate costs as much as a copy of the model; the
sweep instead loads the base and the two experts' tensors once (:class:`TensorCache`), assigns
each candidate's merged tensors into one loaded model, and evaluates it. Each candidate's results
are written atomically to ``DIR/candidates/<name>.json`` as soon as they exist, so a killed sweep
rerun with the same command skips what is done and ends with identical results.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
import yaml
from pydantic import Field

from layerswap.checkpoint import write_text_atomic
from layerswap.config import StrictModel, dump_config, load_config, validate_config
from layerswap.errors import ConfigError, InputPathError
from layerswap.progress import bar

BASELINES: tuple[str, ...] = ("base", "math", "lang", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "revert")


class GridSpec(StrictModel):
    """An explicit grid of layer swaps: every combination of the three lists."""

    bottom: list[int] = Field(default_factory=lambda: [2, 3, 4])
    top: list[int] = Field(default_factory=lambda: [1, 2])
    transition: list[int] = Field(default_factory=lambda: [0])


class CandidatesSpec(StrictModel):
    """Where candidates come from: an analysis ``boundaries.yaml``, a grid, and baselines."""

    boundaries: str | None = None
    top_n: int = Field(8, ge=1)
    grid: GridSpec | None = None
    baselines: list[str] = Field(default_factory=lambda: ["base", "math", "lang", "linear", "ties", "revert"])
    ties_density: float = Field(0.2, gt=0, le=1)
    dare_density: float = Field(0.5, gt=0, le=1)
    seed: int = 0


class SweepConfig(StrictModel):
    """A sweep: the models, the tasks and languages, the candidates, what to keep."""

    base: str
    math: str
    lang: str
    languages: list[str] = Field(default_factory=lambda: ["sw"])
    tasks: list[str] = Field(default_factory=lambda: ["proxy"])
    select: str | None = None
    limit: int | None = Field(32, ge=1)
    shots: int = Field(2, ge=0, le=8)
    format: Literal["native_cot", "direct"] = "native_cot"
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    data_dir: str | None = None
    candidates: CandidatesSpec = Field(default_factory=CandidatesSpec)
    non_layer: str | None = None
    dtype: str | None = None
    device: str | None = None
    #: The expert tensors held for the whole sweep (in CPU memory): float32 keeps blends exact;
    #: ``model`` holds them in the model's dtype (bf16 halves the memory for 7-8B experts).
    cache_dtype: Literal["float32", "model"] = "float32"
    save_best: bool = False


class Candidate(StrictModel):
    """One merged model to evaluate: a method, its parameters, and the analysis score if any."""

    name: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    bottom: int | None = None
    top: int | None = None
    transition: int | None = None
    analysis_score: float | None = None
    source: str = "grid"

    def fingerprint(self) -> str:
        text = json.dumps({"method": self.method, "params": self.params}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    config = load_config(SweepConfig, path, overrides)
    _check_config(config)
    return config


def _check_config(config: SweepConfig) -> None:
    unknown = [b for b in config.candidates.baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r}: valid baselines are {', '.join(BASELINES)}")
    unknown_tasks = [t for t in config.tasks if t not in PRIMARY_METRIC]
    if unknown_tasks or not config.tasks:
        raise ConfigError(f"unknown sweep task {unknown_tasks[0] if unknown_tasks else '(none)'!r}: valid tasks are {', '.join(PRIMARY_METRIC)}")
    from layerswap.data import parse_languages

    parse_languages(config.languages)
    if config.select is not None and config.select not in config.tasks:
        raise ConfigError(f"select {config.select!r} is not among the tasks ({', '.join(config.tasks)}): pick one of them")


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


def swap_candidate(bottom: int, top: int, transition: int = 0, *, score: float | None = None, source: str = "grid") -> Candidate:
    return Candidate(
        name=f"swap-b{bottom}-u{top}" + (f"-t{transition}" if transition else ""),
        method="layer_swap",
        params={"bottom": bottom, "top": top, "transition": transition},
        bottom=bottom,
        top=top,
        transition=transition,
        analysis_score=score,
        source=source,
    )


def read_boundary_candidates(path: str | Path, top_n: int) -> list[Candidate]:
    """The ranked ``candidates`` of an analysis ``boundaries.yaml``."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"boundaries file {path} does not exist: run layerswap analyze first or drop candidates.boundaries")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} has no 'candidates' list: pass the boundaries.yaml written by layerswap analyze")
    out = []
    for entry in entries[:top_n]:
        try:
            out.append(swap_candidate(int(entry["bottom"]), int(entry["top"]), int(entry.get("transition", 0)), score=None if entry.get("score") is None else float(entry["score"]), source="analysis"))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: every candidate needs integer bottom, top (and transition) and a score") from None
    return out


def baseline_candidates(spec: CandidatesSpec, num_layers: int, middle: tuple[int, int] | None) -> list[Candidate]:
    """Baselines: base, each expert alone, souping, task arithmetic, TIES, DARE, revert."""
    out: list[Candidate] = []
    for name in spec.baselines:
        if name in ("base", "math", "lang"):
            out.append(Candidate(name=name, method="identity", params={"source": name}, source="baseline"))
        elif name == "linear":
            out.append(Candidate(name="soup", method="linear", params={"weights": {"math": 0.5, "lang": 0.5}}, source="baseline"))
        elif name == "task_arithmetic":
            out.append(Candidate(name="task-arithmetic", method="task_arithmetic", params={"weights": {"math": 1.0, "lang": 1.0}, "lambda": 1.0}, source="baseline"))
        elif name == "ties":
            out.append(Candidate(name=f"ties-d{spec.ties_density:g}", method="ties", params={"density": spec.ties_density}, source="baseline"))
        elif name in ("dare_ties", "dare_linear"):
            out.append(
                Candidate(
                    name=f"{name.replace('_', '-')}-d{spec.dare_density:g}",
                    method=name,
                    params={"density": spec.dare_density, "seed": spec.seed},
                    source="baseline",
                )
            )
        elif name == "revert":
            lo, hi = middle if middle else (num_layers // 4, num_layers - num_layers // 8 - 1)
            lang_keep = [i for i in range(num_layers) if i < lo or i > hi]
            out.append(
                Candidate(
                    name=f"revert-m{lo}-{hi}",
                    method="revert",
                    params={"keep": {"math": list(range(lo, hi + 1)), "lang": lang_keep}},
                    source="baseline",
                )
            )
    return out


def build_candidates(config: SweepConfig, num_layers: int) -> list[Candidate]:
    """Analysis candidates first (ranked), then the grid, then baselines; duplicates dropped."""
    spec = config.candidates
    found: list[Candidate] = []
    if spec.boundaries:
        found += read_boundary_candidates(spec.boundaries, spec.top_n)
    if spec.grid:
        found += [swap_candidate(b, u, t) for b in spec.grid.bottom for u in spec.grid.top for t in spec.grid.transition]
    scores = {c.name: c.analysis_score for c in found if c.analysis_score is not None}
    seen: dict[str, Candidate] = {}
    for cand in found:
        if cand.method == "layer_swap":
            b, u, t = cand.bottom or 0, cand.top or 0, cand.transition or 0
            if b + u + (t if b else 0) + (t if u else 0) > num_layers - 1:
                raise ConfigError(
                    f"swap bottom={b} top={u} transition={t} leaves no middle layer in a {num_layers}-layer model: shrink the grid"
                )
            if cand.name in scores and cand.analysis_score is None:
                cand = cand.model_copy(update={"analysis_score": scores[cand.name]})
        seen.setdefault(cand.name, cand)
    best_swap = next((c for c in seen.values() if c.method == "layer_swap"), None)
    middle = None
    if best_swap is not None:
        middle = (best_swap.bottom or 0, num_layers - (best_swap.top or 0) - 1)
    for cand in baseline_candidates(spec, num_layers, middle):
        seen.setdefault(cand.name, cand)
    if not seen:
        raise ConfigError("the sweep has no candidates: give candidates.boundaries, candidates.grid or baselines")
    return list(seen.values())


def merge_config_for(candidate: Candidate, config: SweepConfig) -> dict[str, Any] | None:
    """The merge config (a dict for :func:`layerswap.merge.config.merge_config`) of a candidate."""
    if candidate.method == "identity":
        return None
    data: dict[str, Any] = {
        "method": candidate.method,
        "experts": {"math": config.math, "lang": config.lang},
        "base": config.base,
        "params": dict(candidate.params),
    }
    if config.non_layer is not None and candidate.method in ("layer_swap",):
        data["non_layer"] = config.non_layer
    return data


# --------------------------------------------------------------------------------------------
# The result store (resumable)
# --------------------------------------------------------------------------------------------


class ResultStore:
    """One JSON per finished candidate under ``DIR/candidates``, written atomically."""

    def __init__(self, out: Path, settings_key: str) -> None:
        self.dir = out / "candidates"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings_key = settings_key

    def path(self, candidate: Candidate) -> Path:
        return self.dir / f"{candidate.name}.json"

    def load(self, candidate: Candidate) -> list[dict[str, Any]] | None:
        path = self.path(candidate)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a torn file cannot exist (atomic rename), but never trust it
        if record.get("fingerprint") != candidate.fingerprint() or record.get("settings") != self.settings_key:
            return None
        return record["rows"]

    def save(self, candidate: Candidate, rows: list[dict[str, Any]]) -> None:
        record = {"fingerprint": candidate.fingerprint(), "settings": self.settings_key, "rows": rows}
        tmp = self.path(candidate).with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, default=float), encoding="utf-8")
        os.replace(tmp, self.path(candidate))


def settings_key(config: SweepConfig) -> str:
    """What makes two evaluations comparable: tasks, languages, limits, formats and models."""
    keys = ("base", "math", "lang", "languages", "tasks", "limit", "shots", "format", "max_new_tokens", "non_layer", "dtype", "data_dir")
    data = {k: getattr(config, k) for k in keys}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


RESULT_COLUMNS = [
    "candidate",
    "method",
    "parameters",
    "task",
    "language",
    "metric",
    "value",
    "time",
    "merge_time",
    "bottom",
    "top",
    "transition",
    "analysis_score",
    "source",
]


def rows_for(candidate: Candidate, summary: pd.DataFrame, *, eval_seconds: float, merge_seconds: float) -> list[dict[str, Any]]:
    """Tidy rows of one candidate from an evaluation summary (task, language, metric, value)."""
    rows = []
    for rec in summary.to_dict("records"):
        rows.append(
            {
                "candidate": candidate.name,
                "method": candidate.method,
                "parameters": json.dumps(candidate.params, sort_keys=True),
                "task": rec["task"],
                "language": rec["language"],
                "metric": rec["metric"],
                "value": float(rec["value"]),
                "time": round(eval_seconds, 3),
                "merge_time": round(merge_seconds, 4),
                "bottom": candidate.bottom,
                "top": candidate.top,
                "transition": candidate.transition,
                "analysis_score": candidate.analysis_score,
                "source": candidate.source,
            }
        )
    return rows


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


#: The headline metric of each evaluation task (what the sweep selects on and plots).
PRIMARY_METRIC: dict[str, str] = {
    "proxy": "gold_logprob",
    "mgsm": "exact_match",
    "gsm8k": "exact_match",
    "flores": "bits_per_byte",
    "sib200": "accuracy",
}
_EXTRA_METRICS: dict[str, tuple[str, ...]] = {"proxy": ("gold_logprob_per_token",)}


def tidy_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The evaluation summary (one row per task and language) as ``task, language, metric, value``."""
    rows = []
    for rec in summary.to_dict("records"):
        task = rec["task"]
        for metric in (PRIMARY_METRIC.get(task, "exact_match"),) + _EXTRA_METRICS.get(task, ()):
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


def identity_merge(candidate: Candidate, num_layers: int) -> dict[str, Any]:
    """A single model expressed as a revert: ``math``/``lang`` keep every layer, ``base`` none."""
    source = candidate.params["source"]
    if source == "base":
        return {"method": "revert", "params": {"keep": {"math": []}}, "non_layer": "base"}
    return {"method": "revert", "params": {"keep": {source: list(range(num_layers))}}, "non_layer": source}


def run_sweep(config: SweepConfig, out: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Merge every candidate in memory into one loaded model, evaluate it, store, plot and report.

    Returns a dict with the results DataFrame, the :class:`~layerswap.report.Selection` and the
    paths written. Rerunning with the same config and ``out`` resumes where it stopped.
    """
    import torch

    from layerswap.evaluate import evaluate
    from layerswap.evaluate.runner import load_model
    from layerswap.merge.config import merge_config
    from layerswap.merge.memory import TensorCache, apply_merge
    from layerswap.models import resolve_model
    from layerswap.report import report_markdown, select, write_figures

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "sweep.yaml", dump_config(config))
    base_path = str(resolve_model(config.base))
    experts = {"math": str(resolve_model(config.math)), "lang": str(resolve_model(config.lang))}
    config = config.model_copy(update={"base": base_path, "math": experts["math"], "lang": experts["lang"]})
    # Everything that can be wrong with the config is found before minutes of loading.
    cache = TensorCache(experts, base_path, dtype=torch.float32, device="cpu")
    num_layers = cache.num_layers
    candidates = build_candidates(config, num_layers)
    log(f"{len(candidates)} candidates: {', '.join(c.name for c in candidates)}")
    log(f"loading {base_path} once for all candidates")
    lm = load_model(base_path, device=config.device, dtype=config.dtype)
    model_dtype = next(lm.model.parameters()).dtype
    if config.cache_dtype == "model":
        cache.dtype = model_dtype
    cache.preload()

    def to_merge(cand: Candidate):  # noqa: ANN202
        # ``config`` already holds the resolved paths, so merge_config_for names the same experts.
        data = identity_merge(cand, num_layers) if cand.method == "identity" else merge_config_for(cand, config)
        return merge_config({"experts": experts, "base": base_path, **data})

    def merge_into_model(cand: Candidate) -> float:
        return apply_merge(lm.model, cache, to_merge(cand)).seconds

    def evaluate_model(cand: Candidate) -> pd.DataFrame:
        result = evaluate(
            lm,
            config.tasks,
            config.languages,
            fmt=config.format,
            shots=config.shots,
            limit=config.limit,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            data_dir=config.data_dir,
        )
        return tidy_summary(result.summary)

    store = ResultStore(out, settings_key(config))
    results = run_candidates(candidates, store, merge_into_model, evaluate_model)
    write_text_atomic(out / "results.csv", results.to_csv(index=False))
    task = config.select or config.tasks[0]
    selection = select(results, task, PRIMARY_METRIC.get(task, "exact_match"))
    figures = write_figures(
        results, out / "figures", [(t, PRIMARY_METRIC.get(t, "exact_match")) for t in config.tasks]
    )
    notes = [f"{len(candidates)} candidates, each merged in memory into one loaded model (no model folder per candidate)."]
    overhead = merge_overhead(results)
    if overhead:
        notes.append(
            "Merge time as a share of the candidate's evaluation time: "
            + "; ".join(f"{method} up to {share:.1%}" for method, share in overhead.items())
            + "."
        )
    write_text_atomic(out / "report.md", report_markdown(results, selection, figures, root=out, notes=notes))
    written: dict[str, Any] = {"results": results, "selection": selection, "figures": figures, "report": out / "report.md", "overhead": overhead}
    if config.save_best:
        from layerswap.merge import merge as merge_to_disk

        winner = next(c for c in candidates if c.name == selection.winner)
        best = out / "best-model"
        merge_to_disk(to_merge(winner).model_copy(update={"dtype": str(model_dtype).removeprefix("torch.")}), best, overwrite=True)
        written["best_model"] = best
    log(f"winner {selection.winner} ({task} {selection.metric} = {selection.value:.4g}); report: {out / 'report.md'}")
    return written


def validate_sweep_dict(data: dict[str, Any]) -> SweepConfig:
    config = validate_config(SweepConfig, data, source="sweep config")
    _check_config(config)
    return config


__all__ = [
    "SweepConfig",
    "Candidate",
    "build_candidates",
    "load_sweep_config",
    "run_candidates",
    "ResultStore",
    "run_sweep",
]
