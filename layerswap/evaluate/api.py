"""``evaluate``: check a request against the tasks it names, load the model once, run each task
through the registry, and write the records, the summary and provenance.

The task functions (``evaluate_mgsm`` ...) live in their modules under
:mod:`layerswap.evaluate.tasks` and are re-exported here. Every one takes a model as a folder, a
PEFT adapter folder, a short name, a :class:`~layerswap.evaluate.runner.LoadedModel`, or an
in-memory ``(model, tokenizer)`` pair (the sweep merges weights in memory and evaluates each
candidate without touching disk).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from layerswap.config import check_device
from layerswap.errors import ConfigError
from layerswap.evaluate.generation import run_generation_task
from layerswap.evaluate.mgsm import check_shots, load_examples
from layerswap.evaluate.result import EvalResult, ModelLike, as_lm, counts_as_ints, format_summary, save_result
from layerswap.evaluate.runner import LoadedModel
from layerswap.evaluate.tasks import TASKS, EvalRequest, TaskSpec, get_task, nonnegative_shots
from layerswap.evaluate.tasks.custom import evaluate_custom, load_custom
from layerswap.evaluate.tasks.flores import evaluate_flores
from layerswap.evaluate.tasks.gsm8k import evaluate_gsm8k
from layerswap.evaluate.tasks.mgsm import evaluate_mgsm
from layerswap.evaluate.tasks.proxy import evaluate_proxy
from layerswap.evaluate.tasks.sib200 import evaluate_sib200
from layerswap.io import language
from layerswap.io.languages import refuse_repeated

__all__ = [
    "TASKS",
    "EvalResult",
    "evaluate",
    "evaluate_custom",
    "evaluate_flores",
    "evaluate_gsm8k",
    "evaluate_mgsm",
    "evaluate_proxy",
    "evaluate_sib200",
    "format_summary",
    "load_custom",
    "run_generation_task",
    "save_result",
]


def _names(value: str | Sequence[str]) -> list[str]:
    return [x.strip() for x in (value.split(",") if isinstance(value, str) else value) if x.strip()]


def _distinct(checks: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(c for c in checks if c is not None))


def check_request(specs: Sequence[TaskSpec], request: EvalRequest) -> None:
    """Refuse a request before any model is loaded.

    Languages: each task's own check (MGSM's 11 languages for mgsm, proxy, custom), else the data
    table's. ``--shots``: a task's bounded range (MGSM's 0..8) speaks before the bare ``>= 0`` of
    a task with a large pool (gsm8k); a ``--shots`` that no requested task takes is held to
    MGSM's range, as it always was.
    """
    for spec in specs:
        if spec.check_request is not None:
            spec.check_request(request)
    lang_checks = _distinct([s.check_language for s in specs]) or [language]
    for lang in request.langs:
        for check in lang_checks:
            check(lang)
    if request.shots is not None:
        shot_checks = _distinct([s.check_shots for s in specs])
        bounded = [c for c in shot_checks if c is not nonnegative_shots]
        for check in bounded or shot_checks or [check_shots]:
            check(request.shots)


def check_settings(langs: Sequence[str], *, batch_size: int, max_new_tokens: int, limit: int | None, device: str | None, dtype: str | None) -> None:
    """Refuse settings that would run nothing, crash mid-run or evaluate something else than asked."""
    if not langs:
        raise ConfigError("--langs names no language: pass e.g. --langs sw,bn,te")
    for name, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} {value!r} must be a whole number of at least 1")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1):
        raise ConfigError(f"--limit {limit!r} must be a whole number of at least 1 (leave it out for every example)")
    if dtype is not None and not (isinstance(dtype, str) and dtype == "auto"):
        from layerswap.io import parse_dtype_code

        if parse_dtype_code(dtype) not in ("F32", "BF16", "F16"):
            raise ConfigError(f"--dtype {dtype!r} cannot run a model: use auto, float32, bfloat16 or float16")
    if device is not None and not isinstance(device, str):
        return  # a torch.device from the Python API
    check_device(device)


def _inputs(model: Any, data: Any, data_dir: Any, base: Any) -> list[str | Path]:
    """What an evaluation reads from disk, so that its output can never land on it: with an adapter, its base too."""
    from layerswap.io import is_adapter_folder, load_json
    from layerswap.io.lora import adapter_base

    inputs = [x for x in (model, data, data_dir, base) if isinstance(x, (str, Path))]
    if isinstance(model, (str, Path)) and is_adapter_folder(model):
        named = adapter_base(model, load_json(Path(model) / "adapter_config.json", "adapter config"), strict=False)
        if named:
            inputs.append(named)
    return inputs


def evaluate(
    model: ModelLike,
    tasks: str | Sequence[str] = ("mgsm",),
    langs: str | Sequence[str] = ("sw", "bn", "te"),
    *,
    tokenizer: Any = None,
    fmt: str = "native_cot",
    shots: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    data: str | Path | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    base: str | None = None,
) -> EvalResult:
    """Run ``tasks`` on ``langs`` and (with ``out``) write ``examples.jsonl``, ``summary.csv`` and
    a provenance JSON atomically. ``shots=None`` takes each task's ``default_shots`` (mgsm 0 as
    lm-eval, gsm8k 5, proxy 2)."""
    tasks = _names(tasks)
    langs = _names(langs)
    unknown = [t for t in tasks if t not in TASKS and not t.startswith("lm_eval:")]
    if unknown or not tasks:
        raise ConfigError(f"unknown task {unknown[0] if unknown else '(none)'!r}: valid tasks are {', '.join(TASKS)}")
    check_settings(langs, batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit, device=device, dtype=dtype)
    refuse_repeated(tasks, "--task")
    refuse_repeated(langs, "--langs")
    specs = [get_task(t) for t in tasks]  # an lm_eval: task is checked here (lm-eval installed, name, data, metric)
    request = EvalRequest(
        langs=tuple(langs), fmt=fmt, shots=shots, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens,
        data_dir=data_dir, data=data, question_field=question_field, answer_field=answer_field,
    )
    check_request(specs, request)
    if "custom" in tasks and data is not None:  # read the questions now: a bad file fails before the model loads
        if "mgsm" in tasks:
            raise ConfigError("--data is read by both --task custom and --task mgsm (an MGSM variant): run them separately")
        load_custom(data, question_field=question_field, answer_field=answer_field, limit=limit)
    if "mgsm" in tasks and data is not None:
        for lang in langs:
            load_examples(lang, path=data, limit=1)
    inputs = _inputs(model, data, data_dir, base) if out is not None else []
    if out is not None:
        from layerswap.io import prepare_output_dir

        prepare_output_dir(out, overwrite, inputs=inputs)  # fail before the minutes of evaluation
    lm = model if isinstance(model, LoadedModel) else as_lm(model, tokenizer, device=device, dtype=dtype, base=base)
    result = EvalResult()
    for spec in specs:
        result.extend(spec.run(lm, replace(request, shots=spec.shots_for(shots))))
    result.summary = counts_as_ints(result.summary)
    for name in dict.fromkeys(tasks):
        if get_task(name).finish is not None:
            result.summary = get_task(name).finish(result.summary)
    if out is not None:
        settings = {"tasks": tasks, "langs": langs, "format": fmt, "shots": shots, "limit": limit, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
        save_result(result, out, overwrite=overwrite, provenance={"kind": "evaluation", "model": lm.info or lm.name, **settings}, inputs=inputs)
    return result
