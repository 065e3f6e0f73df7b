"""Tasks described as data: prompt template, few-shot prefix, stop strings, answer filters, metric.

A generation task is a :class:`GenerationTask` (one per language and format); adding a language
or a benchmark is a few lines of data, as in lm-evaluation-harness. Scoring is shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from layerswap.evaluate.answers import FALLBACK, Extractor, exact_match, first_answer


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


def strip_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """Cut ``text`` at the first occurrence of any stop string (lm-eval's post-processing)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]
