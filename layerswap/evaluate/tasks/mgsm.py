"""MGSM: exact match of the final number, per language, in lm-eval's ``direct`` or ``native_cot``
format. The words, patterns and data loading are in :mod:`layerswap.evaluate.mgsm`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.mgsm import check_format, check_language, check_shots, load_examples, load_task
from layerswap.evaluate.tasks._common import per_language, request_runner
from layerswap.evaluate.tasks.spec import TaskSpec

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
    data: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """MGSM exact match per language in lm-eval's ``direct`` or ``native_cot`` format; ``data`` is an
    MGSM variant by path (the corrected release, your own: columns question, answer_number, language)."""
    from layerswap.evaluate.generation import run_generation_task
    from layerswap.evaluate.result import take

    check_format(fmt)
    check_shots(shots)
    for lang in langs:
        check_language(lang)

    def one(lm: LoadedModel, lang: str) -> EvalResult:
        task = load_task(lang, fmt, shots=shots, data_dir=data_dir)
        examples = take(load_examples(lang, data_dir=data_dir, limit=limit, path=data), limit)
        return run_generation_task(lm, task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)

    return per_language(model, tokenizer, langs, one)


TASK = TaskSpec(
    name="mgsm",
    summary="MGSM exact match, lm-eval's direct or native_cot prompt (11 languages)",
    run=request_runner(evaluate_mgsm),
    metric="exact_match",
    extra_metrics=("lang_fidelity", "cot_fidelity"),  # layerswap.evaluate.fidelity
    default_shots=DEFAULT_SHOTS,
    training_refused=("mgsm",),
    check_language=check_language,
    check_shots=check_shots,
)
