"""Any lm-evaluation-harness task as a layerswap task: ``lm_eval:<task name>`` (``lm_eval:xcopa_sw``) or
``lm_eval:<path>`` to a task YAML or a folder holding one (``lm_eval:tasks/xcopa_sw.yaml``).

It runs through lm-eval's own API (``simple_evaluate`` with ``HFLM(pretrained=<the loaded model>)``),
so prompts, few-shot handling, filters and metrics are lm-eval's; ``log_samples`` gives each
document's scores, kept as one record per document with ``id`` = lm-eval's ``doc_id``, so a sweep
stores, halves, pairs and reports them like any other task's. The headline metric is the task's
first metric on its first filter, and must be a mean of per-document values (a corpus-level metric
such as BLEU or perplexity cannot be paired: refused). Generative tasks also report language fidelity
(:mod:`layerswap.evaluate.fidelity`) in the language the task name ends with (``_sw``), else in the
language identified in each prompt. Every check runs before a model loads (:func:`spec_for`).

Not a task module itself (the registry builds one :class:`TaskSpec` per name through :func:`spec_for`);
lm-eval is imported only when such a task is named.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import ConfigError, DataError, InputPathError
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec, nonnegative_shots

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.runner import LoadedModel

PREFIX = "lm_eval:"
#: lm-eval's request type of tasks whose outputs are generated text (language fidelity applies).
GENERATIVE = "generate_until"
_HUB_ERRORS = ("ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError")


def is_bridge_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


@contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval and datasets speak through logging and warnings at every step; a layerswap run speaks once."""
    import logging

    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval", "datasets", "httpx", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("lm_eval: tasks need lm-evaluation-harness: pip install lm-eval (or layerswap[dev])") from None
    return lm_eval


def _yaml_task_name(path: Path) -> str:
    """The ``task:`` name of a task YAML, read by lm-eval's own loader (which resolves ``include`` and ``!function``)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval >= 0.4.10

        def read(p: Path) -> Any:
            return load_yaml(p, resolve_func=False)
    except ImportError:  # older lm-eval
        from lm_eval.utils import load_yaml_config

        def read(p: Path) -> Any:
            return load_yaml_config(str(p), mode="simple")

    try:
        config = read(path)
    except Exception as exc:  # a YAML error, a missing include, a bad !function
        raise ConfigError(f"lm-eval task file {path} does not parse ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): fix the YAML") from None
    name = config.get("task") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"lm-eval task file {path} names no task (a top-level `task: NAME`): add one")
    return name


def locate(text: str) -> tuple[str, str | None]:
    """``(lm-eval task name, folder to index or None for lm-eval's own tasks)`` of what follows ``lm_eval:``."""
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_dir() or "/" in text:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("_"))
            if len(files) != 1:
                raise ConfigError(f"lm-eval task folder {path} holds {len(files)} task YAMLs: name one of them (lm_eval:{path}/<task>.yaml)")
            path = files[0]
        if not path.is_file():
            raise InputPathError(f"lm-eval task file {path} does not exist: pass a task YAML, a folder holding one, or an lm-eval task name")
        return _yaml_task_name(path), str(path.resolve().parent)
    return text, None


@functools.lru_cache(maxsize=8)
def task_manager(include: str | None) -> Any:
    """lm-eval's task index: only ``include`` for a local YAML (fast), else every task lm-eval ships (indexing takes a while)."""
    from lm_eval.tasks import TaskManager

    with _quiet():
        return TaskManager(include_path=include, include_defaults=include is None, verbosity="ERROR")


def load_task(name: str, include: str | None) -> Any:
    """lm-eval's task object (its data loaded): unknown names, groups and an unreachable Hub fail in one line."""
    manager = task_manager(include)
    if name not in manager.all_tasks:
        where = f"in {include}" if include else "among lm-eval's tasks (`lm_eval ls tasks` lists them)"
        raise ConfigError(f"unknown lm-eval task {name!r} {where}: check the name, or pass the path of its YAML as lm_eval:<path>")
    from lm_eval.tasks import get_task_dict

    try:
        with _quiet():
            tasks = get_task_dict([name], manager)
    except Exception as exc:
        if type(exc).__name__ in _HUB_ERRORS or any(w in str(exc).lower() for w in ("the hub", "huggingface.co", "offline mode")):
            raise InputPathError(
                f"lm-eval task {name!r} reads its data from the Hugging Face Hub, which cannot be reached: use a local copy "
                "(a task YAML with dataset_path: json and dataset_kwargs: data_files)"
            ) from None
        raise DataError(f"lm-eval task {name!r} cannot load its data ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    leaves = _leaves(tasks)
    if len(leaves) != 1:
        raise ConfigError(f"lm-eval name {name!r} is a group of {len(leaves)} tasks: name one of them (e.g. lm_eval:{sorted(leaves)[0]})")
    return next(iter(leaves.values()))


def _leaves(tasks: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tasks.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = value
    return out


def headline(task: Any) -> tuple[str, str, bool]:
    """``(metric, filter, higher is better)``: the task's first metric on its first filter, a mean of per-document values."""
    from lm_eval.api.metrics import mean

    metrics = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)] or list(task.aggregation())
    if not metrics:
        raise ConfigError(f"lm-eval task {task.config.task!r} declares no metric: layerswap has nothing to score")
    metric = metrics[0]
    aggregation = task.aggregation().get(metric)
    if aggregation is not mean:
        how = getattr(aggregation, "__name__", str(aggregation))
        raise ConfigError(
            f"lm-eval task {task.config.task!r}: metric {metric!r} aggregates as {how} over the whole set, not as a mean of "
            "per-document scores, so there is no per-example score to pair: pick a task with a per-document metric (acc, exact_match)"
        )
    filters = [f["name"] for f in (task.config.filter_list or []) if isinstance(f, dict) and f.get("name")] or ["none"]
    return metric, filters[0], bool(task.higher_is_better().get(metric, True))


def language_of(name: str) -> str:
    """The language a task name ends with (``xcopa_sw`` -> ``sw``, ``belebele_swh_Latn`` -> ``sw``), else ``-``."""
    from layerswap.io import language

    parts = name.split("_")
    for i in range(len(parts) - 1, 0, -1):
        try:
            return language("_".join(parts[i:])).code
        except DataError:
            continue
    return "-"


@functools.lru_cache(maxsize=64)
def spec_for(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``lm_eval:<name or path>``, checked (lm-eval installed, task known, data
    reachable, a per-document headline metric) before any model is loaded."""
    if not is_bridge_name(name):
        raise ConfigError(f"{name!r} is not an lm-eval task: write lm_eval:<task name or YAML path>")
    _require_lm_eval()
    text = name[len(PREFIX) :].strip()
    if not text:
        raise ConfigError("lm_eval: names no task: write lm_eval:<task name> or lm_eval:<path to a task YAML>")
    task_name, include = locate(text)
    task = load_task(task_name, include)
    metric, filter_name, higher = headline(task)
    _INPUT_FILES[name] = ((include,) if include else ()) + _data_files(task)
    generative = task.OUTPUT_TYPE == GENERATIVE

    def run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
        return evaluate_lm_eval(lm, spec, req, task_name=task_name, include=include, filter_name=filter_name, generative=generative)

    spec = TaskSpec(
        name=name,
        summary=f"lm-eval's {task_name} ({task.OUTPUT_TYPE}), {metric} on filter {filter_name}",
        run=run,
        metric=metric,
        higher_is_better=higher,
        score_field="score",
        extra_metrics=("lang_fidelity", "cot_fidelity") if generative else (),
        check_language=lambda lang: lang,  # the task's language is in its name; --langs does not select here
        check_shots=nonnegative_shots,
        scores_blocks=True,  # lm-eval's `samples`: a halving block scores only its documents
    )
    return spec


@functools.lru_cache(maxsize=1)
def fast_hflm_class() -> type:
    """lm-eval's ``HFLM`` whose greedy ``generate_until`` runs layerswap's runner
    (:func:`~layerswap.evaluate.runner.generate`: the tokens of ``generate``, rows leaving the batch when
    they stop, the few-shot prefix computed once). Stop strings, the EOS stop and ``max_gen_toks`` are read
    with lm-eval's own helpers and the text is cut as lm-eval cuts it; sampling, extra generation
    arguments and contexts lm-eval would truncate go to ``HFLM.generate_until`` itself."""
    import json

    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    from layerswap.evaluate.runner import encode, generate

    class FastHFLM(HFLM):
        layerswap_lm: Any = None

        def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
            out: list[str | None] = [None] * len(requests)
            eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
            groups: dict[str, list[int]] = {}
            for i, req in enumerate(requests):
                groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
            rest: list[int] = []
            for idx in groups.values():
                kwargs = normalize_gen_kwargs(requests[idx[0]].args[1], self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                max_gen = kwargs.pop("max_gen_toks")
                greedy = not kwargs.pop("do_sample", False) and not kwargs.pop("temperature", 0.0) and not kwargs
                contexts = [requests[i].args[0] for i in idx]
                fits = all(len(encode(self.tokenizer, c)) + max_gen <= self.max_length for c in contexts)
                if not (greedy and fits and getattr(self, "think_end_token", None) is None and self.layerswap_lm is not None):
                    rest.extend(idx)
                    continue
                texts = generate(self.layerswap_lm, contexts, stop=until, max_new_tokens=max_gen, batch_size=int(self.batch_size), desc="lm-eval generate_until")
                for i, text in zip(idx, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
            if rest:
                for i, text in zip(rest, super().generate_until([requests[i] for i in rest], disable_tqdm), strict=True):
                    out[i] = text
            return out

    return FastHFLM


_INPUT_FILES: dict[str, tuple[str, ...]] = {}


def _data_files(task: Any) -> tuple[str, ...]:
    """The local files named by a task's ``dataset_kwargs.data_files`` (a path, a list, or split -> path(s))."""
    files = (getattr(task.config, "dataset_kwargs", None) or {}).get("data_files") or ()
    values = files.values() if isinstance(files, dict) else [files]
    flat = [v for value in values for v in (value if isinstance(value, (list, tuple)) else [value])]
    return tuple(str(v) for v in flat if isinstance(v, str) and Path(v).exists())


def input_paths(name: str) -> tuple[str, ...]:
    """What an ``lm_eval:`` task reads from disk (its YAML folder, its local data files), for a sweep's
    resume key: a changed task file or data file is evaluated again. Empty for every other task."""
    if not is_bridge_name(name):
        return ()
    spec_for(name)
    return _INPUT_FILES.get(name, ())


def evaluate_lm_eval(
    lm: LoadedModel, spec: TaskSpec, req: EvalRequest, *, task_name: str, include: str | None, filter_name: str, generative: bool
) -> EvalResult:
    """Run one lm-eval task on the loaded model through ``simple_evaluate``; one record per document
    (documents ``req.offset`` to ``req.limit`` only where an offset is given: lm-eval's ``samples``)."""
    import time

    import lm_eval
    import pandas as pd

    from layerswap.evaluate.fidelity import fidelity, fidelity_columns, identifier, token_counter
    from layerswap.evaluate.result import EvalResult

    name, metric = spec.name, spec.metric
    block = req.offset > 0 and req.limit is not None
    t0 = time.perf_counter()
    with _quiet():
        hflm = fast_hflm_class()(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=req.batch_size, max_gen_toks=req.max_new_tokens)
        hflm.layerswap_lm = lm
        out = lm_eval.simple_evaluate(
            model=hflm,
            tasks=[task_name],
            task_manager=task_manager(include),
            num_fewshot=req.shots,
            limit=None if block else req.limit,
            samples={task_name: list(range(req.offset, req.limit))} if block else None,
            log_samples=True,
            gen_kwargs=f"max_gen_toks={req.max_new_tokens}" if generative else None,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    seconds = round(time.perf_counter() - t0, 2)
    lang = language_of(task_name)
    count = token_counter(lm.tokenizer)
    by_doc: dict[int, dict[str, Any]] = {}
    for s in out["samples"][task_name]:
        rec = by_doc.setdefault(int(s["doc_id"]), {"task": name, "lang": lang, "id": str(s["doc_id"]), "target": str(s["target"])})
        for m in s["metrics"]:
            rec[f"{m},{s['filter']}"] = float(s[m])
        if s["filter"] == filter_name:
            rec["score"] = float(s[metric])
        if generative and "output" not in rec:
            rec["prompt"], rec["output"] = s["arguments"][0][0], s["resps"][0][0]
        elif not generative and "logprobs" not in rec:
            rec["logprobs"] = [float(r[0][0]) for r in s["resps"]]
    records = [by_doc[d] for d in sorted(by_doc) if d >= req.offset]
    if generative:
        identify = identifier()
        for rec in records:
            rec.update(fidelity(rec["output"], lang if lang != "-" else identify(rec["prompt"]) or "-", count))
    agg = spec.aggregate(pd.DataFrame({"score": [r["score"] for r in records]}), lang=lang)
    row: dict[str, Any] = {"task": name, "lang": lang, "shots": req.shots, "n": agg["n"], metric: agg["value"]}
    row.update({k: agg[k] for k in ("stderr", "ci_low", "ci_high")})
    for key in sorted({k for r in records for k in r if "," in k}):
        row[key] = sum(r[key] for r in records) / len(records)
    if generative:
        row.update(fidelity_columns(records, task=name, lang=lang))
    row["seconds"] = seconds
    return EvalResult.of(records, [row])
