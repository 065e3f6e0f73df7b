"""Your own questions (JSONL, or TSV with a header) evaluated like MGSM in one language: its prompt
words, stop strings and answer patterns; gold answers may be numbers or ``#### N`` worked answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import ConfigError, DataError, InputPathError
from layerswap.evaluate.answers import gsm8k_gold
from layerswap.evaluate.generation import Example
from layerswap.evaluate.mgsm import check_language, check_shots, load_task
from layerswap.evaluate.tasks._common import request_runner
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec
from layerswap.io import iter_records, require_fields

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike

DEFAULT_SHOTS = 0


def load_custom(path: str | Path, *, question_field: str = "question", answer_field: str = "answer", limit: int | None = None) -> list[Example]:
    """Questions from a JSONL file or a TSV/CSV with a header; a missing field names the line."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"data file {path} does not exist")
    rows = iter_records(path, hint="use a .jsonl file or a .tsv file with a header row")
    examples = []
    for lineno, rec in rows:
        require_fields(rec, [question_field, answer_field], path=path, lineno=lineno)
        examples.append(Example(f"{path.stem}-{lineno}", str(rec[question_field]), gsm8k_gold(str(rec[answer_field])), {"line": lineno}))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def evaluate_custom(
    model: ModelLike,
    data: str | Path,
    *,
    lang: str,
    question_field: str = "question",
    answer_field: str = "answer",
    fmt: str = "native_cot",
    shots: int = DEFAULT_SHOTS,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """User questions evaluated like MGSM in ``lang`` (its prompt words, stop strings, patterns)."""
    from layerswap.evaluate.generation import run_generation_task
    from layerswap.evaluate.result import as_lm

    check_language(lang)
    examples = load_custom(data, question_field=question_field, answer_field=answer_field, limit=limit)
    task = replace(load_task(lang, fmt, shots=shots, data_dir=data_dir), name=f"custom_{fmt}_{lang}", family="custom")
    return run_generation_task(as_lm(model, tokenizer), task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)


def _needs_data(req: EvalRequest) -> None:
    if req.data is None:
        raise ConfigError("--task custom needs --data FILE (with --question-field, --answer-field and --lang)")


TASK = TaskSpec(
    name="custom",
    summary="your JSONL/TSV questions (--data), scored like MGSM in --lang",
    run=request_runner(evaluate_custom, lang=lambda req: req.langs[0]),
    metric="exact_match",
    extra_metrics=("lang_fidelity", "cot_fidelity"),  # layerswap.evaluate.fidelity
    default_shots=DEFAULT_SHOTS,
    check_language=check_language,
    check_shots=check_shots,
    check_request=_needs_data,
    in_sweep=False,
)
