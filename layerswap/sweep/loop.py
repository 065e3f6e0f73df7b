"""``run_sweep``, read top to bottom: check the inputs -> open the models -> build the candidates ->
``strategy.run`` (:mod:`~layerswap.sweep.search`) -> decide and write (:func:`~layerswap.sweep.report.write_report`,
which asks :mod:`~layerswap.sweep.selection`).

Why in memory: writing a model folder per candidate costs as much as a copy of the model; the
sweep instead loads the base and the two experts' tensors once (``TensorCache``), assigns each
candidate's merged tensors into one loaded model, and evaluates it. Each candidate's results go to
the :class:`~layerswap.sweep.store.ResultStore` as soon as they exist, so a rerun resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from layerswap.config import dump_config
from layerswap.errors import InputPathError
from layerswap.evaluate.tasks import get_task
from layerswap.io import write_text_atomic
from layerswap.merge.methods.identity import identity_merge
from layerswap.sweep.candidates import build_candidates, merge_config_for
from layerswap.sweep.config import Candidate, SweepConfig
from layerswap.sweep.race import Unit
from layerswap.sweep.report import write_report
from layerswap.sweep.resume import settings_key
from layerswap.sweep.search import SearchContext, get_strategy
from layerswap.sweep.selection import SweepResult
from layerswap.sweep.shard import Shard
from layerswap.sweep.store import ESTIMATE_COLUMNS

if TYPE_CHECKING:
    from layerswap.merge.config import MergeConfig
    from layerswap.merge.memory import TensorCache


def tidy_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The evaluation summary (one row per task and language) as ``task, language, metric, value`` and,
    for the task's headline metric (and any other metric the summary gives an interval, ``{metric}_ci_low``),
    the ``stderr, ci_low, ci_high, n`` its runner computed."""
    rows = []
    for rec in summary.to_dict("records"):
        spec = get_task(rec["task"])
        for metric in spec.metrics:
            if metric in rec and rec[metric] is not None:
                row = {"task": spec.name, "language": rec.get("lang", ""), "metric": metric, "value": float(rec[metric])}
                if metric == spec.metric:
                    row.update({k: rec[k] for k in ESTIMATE_COLUMNS if k in rec})
                elif rec.get(f"{metric}_ci_low") is not None:  # an extra metric with its own interval (language fidelity)
                    row.update({k: rec.get(f"{metric}_{k}") for k in ("stderr", "ci_low", "ci_high")}, n=rec.get("n"))
                rows.append(row)
    return pd.DataFrame(rows, columns=["task", "language", "metric", "value", *ESTIMATE_COLUMNS])


class InMemorySweep:
    """One loaded model and the experts' cached tensors: each candidate is merged into the model.

    ``config`` must hold resolved model paths, so :func:`merge_config_for` names the same experts.
    """

    def __init__(self, config: SweepConfig, cache: TensorCache, *, log: Callable[[str], None]) -> None:
        from layerswap.evaluate.runner import auto_device, auto_dtype, load_model

        self.config = config
        self.experts = {"math": config.math, "lang": config.lang}
        self.cache = cache
        self.num_layers = cache.num_layers
        log(f"loading {config.base} once for all candidates")
        dev = auto_device(config.device)  # a model memory cannot hold is refused here, not killed while loading
        ref = self.cache.reference.config
        self.cache.check_model_fits(auto_dtype(dev, ref.get("dtype") or ref.get("torch_dtype"), config.dtype), dev)
        self.lm = load_model(config.base, device=config.device, dtype=config.dtype)
        self.model_dtype = next(self.lm.model.parameters()).dtype
        if config.cache_dtype == "model":
            self.cache.dtype = self.model_dtype
        self.cache.preload()
        #: Each candidate's merge plan (its layer and non-layer operations), and evaluations by plan:
        #: candidates whose plans are equal hold the same weights and are evaluated once.
        self.plans: dict[str, tuple[Any, ...]] = {}
        self._evaluated: dict[tuple[Any, ...], Any] = {}
        self._sources: dict[tuple[int | None, str], str] = {}

    def same_weights(self, candidates: list[Candidate]) -> dict[str, list[str]]:
        """Candidates that merge to the same weights (equal plans), by the first of them: each group is
        evaluated once and every name in it reported with those scores."""
        from layerswap.merge.memory import plan_for

        groups: dict[tuple[Any, ...], list[str]] = {}
        for cand in candidates:
            plan = plan_for(self.cache, self.merge_config(cand))
            ops = (*plan.layer_ops, plan.non_layer_op)
            self.plans[cand.name] = tuple(self._canonical(i if i < plan.num_layers else None, op) for i, op in enumerate(ops))
            groups.setdefault(self.plans[cand.name], []).append(cand.name)
        return {names[0]: names[1:] for names in groups.values() if len(names) > 1}

    def _canonical(self, layer: int | None, op: Any) -> Any:
        """``op`` with a selected source replaced by the first source (base, math, lang) whose tensors at
        ``layer`` (None: embeddings, final norm, head) are equal to it: an expert trained with frozen
        embeddings selects the base's own, so a revert and a swap can be one model."""
        from layerswap.merge.ops import Select

        if not isinstance(op, Select):
            return op
        key = (layer, op.source)
        if key not in self._sources:
            import torch

            arch = self.cache.architecture
            names = [n for n in self.cache.names() if arch.classify(n).layer == layer]
            self._sources[key] = next(
                label
                for label in ("base", "math", "lang")
                if label == op.source or all(torch.equal(self.cache.weight(label, n), self.cache.weight(op.source, n)) for n in names)
            )
        return Select(self._sources[key])

    def _once(self, cand: Candidate, what: tuple[Any, ...], run: Callable[[], Any]) -> Any:
        """``run()``'s result for ``cand``'s plan and ``what``, computed once per plan (copies handed out)."""
        key = (self.plans.get(cand.name, cand.name), *what)
        if key not in self._evaluated:
            self._evaluated[key] = run()
        found = self._evaluated[key]
        return tuple(f.copy() for f in found) if isinstance(found, tuple) else found.copy()

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
        settings (``limit``: examples per task and language instead of the sweep's); once per plan."""
        tasks = tasks or self.config.tasks
        return self._once(cand, ("tasks", tuple(tasks), limit), lambda: self._evaluate_model(tasks, limit))

    def _evaluate_model(self, tasks: list[str], limit: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        from layerswap.evaluate import evaluate, example_scores
        from layerswap.evaluate.scores import extra_scores

        c = self.config
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
        scores += [extra_scores(result.records, task) for task in tasks]  # language fidelity per example, for pairing
        return tidy_summary(result.summary), pd.concat(scores, ignore_index=True)

    def evaluate_block(self, cand: Candidate, unit: Unit) -> pd.DataFrame:
        """``cand`` on the screen task's examples ``unit.start`` to ``unit.stop`` of each language.

        A task that scores blocks (``TaskSpec.scores_blocks``: the proxies) is asked for only those
        examples through the registry; any other task is run on the first ``unit.stop`` examples and
        the block's are kept (correct, but the earlier examples are scored again). Once per plan."""
        return self._once(cand, ("block", unit.start, unit.stop), lambda: self._evaluate_block(cand, unit))

    def _evaluate_block(self, cand: Candidate, unit: Unit) -> pd.DataFrame:
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
        scores = scores[scores["task"] == spec.name]  # the headline only (not its extra metrics' rows)
        position = scores.groupby("lang", sort=False).cumcount()
        return scores[(position >= unit.start) & (position < unit.stop)].reset_index(drop=True)

    def save(self, winner: Candidate, out: Path) -> None:
        """Write candidate ``winner`` to disk as a model folder in the loaded model's dtype."""
        from layerswap.merge import merge as merge_to_disk

        dtype = str(self.model_dtype).removeprefix("torch.")
        merge_to_disk(self.merge_config(winner).model_copy(update={"dtype": dtype}), out, overwrite=True)


def _silent(_: str) -> None:
    """The log of a process other than the main one: the main process speaks for all."""


def resolve_models(config: SweepConfig) -> SweepConfig:
    """``config`` with the base and the experts as resolved folders (short names expanded)."""
    from layerswap.io import resolve_model

    return config.model_copy(update={k: str(resolve_model(getattr(config, k))) for k in ("base", "math", "lang")})


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
    # Everything that can be wrong with the config or the models is found before minutes of loading.
    cache = expert_cache(config)
    candidates = build_candidates(config, cache.num_layers)
    search = get_strategy(config.candidates.search)
    search.check(config, len(candidates))
    log(f"{len(candidates)} candidates: {', '.join(c.name for c in candidates)}")
    sweep = InMemorySweep(config, cache, log=log)
    same = sweep.same_weights(candidates)
    for first, others in same.items():
        log(f"same merged weights as {first}, evaluated once: {', '.join(others)}")
    if sharding.world > 1:
        log(f"{sharding.world} processes share the candidates ({len(candidates)} in all)")
    elif Shard.launched_alone():
        log(
            "note: accelerate launch --cpu started one process (on one machine it starts more only through mpirun): "
            "this sweep runs alone; launch with --config_file examples/accelerate/ddp-2.yaml or --multi_gpu --num_processes N"
        )
    if sharding.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "sweep.yaml", dump_config(given))
    sharding.wait()  # the folder exists before any process stores a result in it
    found = search.run(
        SearchContext(config, candidates, out, key, sweep.merge_into_model, sweep.evaluate_model, sweep.evaluate_block, log, sharding)
    )
    if not sharding.is_main:
        return SweepResult(results=found.results, halving=found.race, scores=found.scores)
    write_text_atomic(out / "results.csv", found.results.to_csv(index=False))
    written = write_report(found.results, config, len(candidates), out, found.scores, found.race, same_weights=same)
    selection = written.selection
    assert selection is not None and written.comparisons is not None
    if config.save_best:
        written.best_model = out / "best-model"
        sweep.save(next(c for c in candidates if c.name == selection.winner), written.best_model)
    log(summary_line(written, out))
    return written


def expert_cache(config: SweepConfig) -> TensorCache:
    """The base's and the experts' tensors, opened (headers only) and checked to come from one base."""
    import torch

    from layerswap.merge.memory import TensorCache

    return TensorCache({"math": config.math, "lang": config.lang}, config.base, dtype=torch.float32, device="cpu")


def summary_line(written: SweepResult, out: Path) -> str:
    """The sweep's last log line: the leader and how many candidates the data cannot separate from it."""
    selection, comps = written.selection, written.comparisons
    assert selection is not None and comps is not None
    tied = comps[
        (comps["role"] == "leader") & (comps["task"] == selection.task) & (comps["language"] == "all") & (comps["verdict"] != "worse")
    ]
    return (
        f"best mean {selection.winner} ({selection.task} {selection.metric} = {selection.value:.4g}); "
        f"{len(tied)} other candidate(s) statistically indistinguishable from it; report: {out / 'report.md'}"
    )
