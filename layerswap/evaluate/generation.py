"""Generate-then-extract tasks described as data: prompt template, few-shot prefix, stop strings,
answer filters, metric.

A generation task is a :class:`GenerationTask` (one per language and format); adding a language
or a benchmark is a few lines of data, as in lm-evaluation-harness. Scoring is shared, and
:func:`run_generation_task` is the one path MGSM, GSM8K and custom data run through.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.answers import FALLBACK, Extractor, exact_match, first_answer

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.runner import LoadedModel


@dataclass(frozen=True)
class Example:
    """One question with its gold answer (already normalised: ``2,125`` -> ``2125``)."""

    id: str
    question: str
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationTask:
    """A generate-then-extract task.

    ``template`` holds ``{question}``; the prompt is ``fewshot + template`` (``fewshot`` already
    ends with the few-shot delimiter when non-empty). ``answer_order`` names the filters tried in
    turn for the headline answer; every filter is also reported on its own (lm-eval style).
    """

    name: str
    family: str
    lang: str
    template: str
    stop: tuple[str, ...]
    extractors: tuple[Extractor, ...]
    answer_order: tuple[str, ...]
    fewshot: str = ""
    shots: int = 0
    fmt: str = ""

    def prompt(self, question: str) -> str:
        return self.fewshot + self.template.format(question=question)

    def score(self, output: str | None, gold: str) -> dict[str, Any]:
        """Extract with every filter, pick the headline answer, compare with the gold number."""
        output = output if isinstance(output, str) else ""
        extracted = {ex.name: ex(output) for ex in self.extractors}
        answer = first_answer(extracted, self.answer_order)
        correct = bool(output.strip()) and answer != FALLBACK and exact_match(answer, gold)
        per_filter = {f"em_{name}": bool(output.strip()) and exact_match(value, gold) for name, value in extracted.items()}
        return {"extracted": extracted, "answer": answer, "correct": correct, **per_filter}


def run_generation_task(
    lm: LoadedModel, task: GenerationTask, examples: Sequence[Example], *, batch_size: int = 8, max_new_tokens: int = 256
) -> EvalResult:
    """Generate, extract and score one task (one language): the shared MGSM/GSM8K/custom path."""
    # Imported here: the task registry imports this module, and the CLI reads the registry at start-up.
    from layerswap.evaluate.fidelity import fidelity, fidelity_columns, token_counter
    from layerswap.evaluate.result import EvalResult
    from layerswap.evaluate.runner import generate
    from layerswap.evaluate.uncertainty import mean_columns

    prompts = [task.prompt(ex.question) for ex in examples]
    t0 = time.perf_counter()
    outputs = generate(lm, prompts, stop=task.stop, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=task.name)
    seconds = time.perf_counter() - t0
    count = token_counter(lm.tokenizer)
    records = []
    for ex, prompt, output in zip(examples, prompts, outputs, strict=True):
        scored = task.score(output, ex.gold)
        records.append(
            {"task": task.family, "name": task.name, "lang": task.lang, "id": ex.id, "prompt": prompt, "output": output, "gold": ex.gold, **scored,
             **fidelity(output, task.lang, count)}
        )
    n = len(records)
    row: dict[str, Any] = {
        "task": task.family,
        "format": task.fmt,
        "lang": task.lang,
        "shots": task.shots,
        "n": n,
        "exact_match": sum(r["correct"] for r in records) / n,
        **mean_columns([r["correct"] for r in records], task=task.family, lang=task.lang),
    }
    for ex in task.extractors:
        row[f"em_{ex.name}"] = sum(r[f"em_{ex.name}"] for r in records) / n
    row.update(fidelity_columns(records, task=task.family, lang=task.lang))
    row["empty"] = sum(1 for r in records if not r["output"].strip())
    row["seconds"] = round(seconds, 2)
    return EvalResult.of(records, [row])
