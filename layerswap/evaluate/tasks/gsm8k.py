"""GSM8K test (English) exact match with lm-eval's ``gsm8k`` prompt: the math expert's source skill.

GSM8K train supplies the few-shot exemplars (and is the math training set); GSM8K test is scored
here and holds the MGSM questions, so only its test split is refused for training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.answers import flexible_extractor, gsm8k_gold, strict_extractor
from layerswap.evaluate.generation import Example, GenerationTask
from layerswap.evaluate.tasks._common import hub_rows, local_rows, request_runner
from layerswap.evaluate.tasks.spec import TaskSpec, nonnegative_shots
from layerswap.io import iter_jsonl, resolve_data_dir

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")
DEFAULT_SHOTS = 5


def gsm8k_task(shots: int, train: list[tuple[str, str]]) -> GenerationTask:
    """lm-eval's ``gsm8k`` prompt ("Question: ...\\nAnswer:"), first ``shots`` train examples."""
    fewshot = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in train[:shots])
    return GenerationTask(
        name="gsm8k",
        family="gsm8k",
        lang="en",
        template="Question: {question}\nAnswer:",
        stop=GSM8K_STOP,
        extractors=(strict_extractor(r"#### (\-?[0-9\.\,]+)"), flexible_extractor()),
        answer_order=("strict-match", "flexible-extract"),
        fewshot=fewshot,
        shots=shots,
        fmt="cot",
    )


def load_rows(split: str, data_dir: str | Path | None) -> list[tuple[str, str]]:
    """(question, worked answer) pairs of a split, from ``<data>/gsm8k/<split>.jsonl`` or the Hub."""
    root = resolve_data_dir(data_dir)
    fields = ("question", "answer")
    if root is not None:
        return local_rows(iter_jsonl, root / "gsm8k" / f"{split}.jsonl", fields, fields)
    return hub_rows("openai/gsm8k", lambda d: (d["question"], d["answer"]), "openai/gsm8k", "main", split=split)


def evaluate_gsm8k(
    model: ModelLike,
    *,
    shots: int = DEFAULT_SHOTS,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """GSM8K test (English) exact match, to watch the math expert's source skill."""
    from layerswap.evaluate.generation import run_generation_task
    from layerswap.evaluate.result import as_lm, take

    nonnegative_shots(shots)
    lm = as_lm(model, tokenizer)
    train = load_rows("train", data_dir) if shots else []
    test = take(load_rows("test", data_dir), limit)
    examples = [Example(f"gsm8k-{i}", q, gsm8k_gold(a)) for i, (q, a) in enumerate(test)]
    return run_generation_task(lm, gsm8k_task(shots, train), examples, batch_size=batch_size, max_new_tokens=max_new_tokens)


TASK = TaskSpec(
    name="gsm8k",
    summary="GSM8K test exact match (English), lm-eval's gsm8k prompt",
    run=request_runner(evaluate_gsm8k),
    metric="exact_match",
    extra_metrics=("lang_fidelity", "cot_fidelity"),  # layerswap.evaluate.fidelity
    default_shots=DEFAULT_SHOTS,
    training_refused=("gsm8k:test",),
    check_shots=nonnegative_shots,
)
