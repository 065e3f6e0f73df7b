"""MGSM: exact match of the final number, per language, in lm-eval's ``direct`` or ``native_cot``
format. The words, patterns and data loading are in :mod:`layerswap.evaluate.mgsm`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.mgsm import check_format, check_language, check_shots, load_examples, load_exemplars, make_task
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel

DEFAULT_SHOTS = 0  # lm-eval's default


def evaluate_mgsm(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    fmt: str = "native_cot",
    shots: int = DEFAULT_SHOTS,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """MGSM exact match per language in lm-eval's ``direct`` or ``native_cot`` format."""
    from layerswap.evaluate.generation import run_generation_task
    from layerswap.evaluate.result import EvalResult, as_lm, take

    check_format(fmt)
    check_shots(shots)
    for lang in langs:
        check_language(lang)
    lm = as_lm(model, tokenizer)
    result = EvalResult()
    for lang in langs:
        exemplars = load_exemplars(lang, data_dir=data_dir) if shots else None
        task = make_task(lang, fmt, shots=shots, exemplars=exemplars)
        examples = take(load_examples(lang, data_dir=data_dir, limit=limit), limit)
        result.extend(run_generation_task(lm, task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens))
    return result


def _run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
    return evaluate_mgsm(
        lm, req.langs, fmt=req.fmt, shots=req.shots, limit=req.limit, batch_size=req.batch_size,
        max_new_tokens=req.max_new_tokens, data_dir=req.data_dir,
    )


TASK = TaskSpec(
    name="mgsm",
    summary="MGSM exact match, lm-eval's direct or native_cot prompt (11 languages)",
    run=_run,
    metric="exact_match",
    default_shots=DEFAULT_SHOTS,
    training_refused=("mgsm",),
    check_language=check_language,
    check_shots=check_shots,
)
