"""A proxy aligned with chain-of-thought experts: ``log p(English gold worked solution | question)``.

The gold-answer proxy (:mod:`~layerswap.evaluate.tasks.proxy`) scores ``" Jibu ni 18."`` right after
the question; a math expert trained on worked solutions puts its mass on reasoning instead, so it can
score *below* the base there. This proxy scores what such an expert was trained to write: the English
worked solution of the same problem, given the question in the target language, in lm-evaluation-
harness's ``mgsm_en_cot_<lang>`` format (``"Swali: {question}\\nStep-by-Step Answer:"``, target
delimiter ``" "``; few-shot exemplars as lm-eval renders its train docs).

MGSM's 250 questions are the first 250 GSM8K test questions in order (their English text and final
numbers match exactly; checked on every run: a question whose GSM8K number differs from MGSM's gold
stops with a :class:`~layerswap.errors.DataError`). The GSM8K solution becomes lm-eval's English CoT
answer style: calculator marks ``<<a*b=c>>`` removed, lines joined, ``#### N`` replaced by
``The answer is N.``. One forward pass per example (the continuation is about 100 tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import DataError
from layerswap.evaluate.mgsm import check_language, check_shots
from layerswap.evaluate.tasks._common import one_row, per_language, request_runner, timed
from layerswap.evaluate.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from layerswap.evaluate.mgsm import Exemplar
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel

DEFAULT_SHOTS = 0  # lm-eval's default for MGSM
EN_COT_CUE = "Step-by-Step Answer:"
MGSM_QUESTIONS = 250
_CALC = re.compile(r"<<[^<>]*>>")


def en_cot_solution(gsm8k_answer: str) -> str:
    """A GSM8K worked answer in lm-eval's English CoT style: marks dropped, lines joined, ``The answer is N.``"""
    from layerswap.evaluate.answers import gsm8k_gold

    body = gsm8k_answer.split("####")[0]
    steps = " ".join(line.strip() for line in _CALC.sub("", body).splitlines() if line.strip())
    return f"{steps} The answer is {gsm8k_gold(gsm8k_answer)}.".strip()


def en_cot_prompt(lang: str, question: str, exemplars: Sequence[Exemplar] = (), shots: int = 0) -> str:
    """``mgsm_en_cot_<lang>``'s prompt: train docs as ``question + "\\nStep-by-Step Answer:" + " " +
    answer[len(native cue) + 1:]``, joined by blank lines, then ``"<question prefix> " + question + "\\nStep-by-Step Answer:"``."""
    from layerswap.evaluate.mgsm import FEWSHOT_DELIMITER, MGSM_LANGUAGES

    words = MGSM_LANGUAGES[lang]
    fewshot = "".join(
        f"{ex.question}\n{EN_COT_CUE} {ex.answer[len(words.answer) + 1 :]}{FEWSHOT_DELIMITER}" for ex in exemplars[:shots]
    )
    return f"{fewshot}{words.question} {question}\n{EN_COT_CUE}"


def english_solutions(n: int, data_dir: str | Path | None) -> list[tuple[str, str]]:
    """The first ``n`` (at most 250) GSM8K test (question, worked answer) pairs: MGSM's questions in English."""
    from layerswap.evaluate.tasks.gsm8k import load_rows

    rows = load_rows("test", data_dir)[: min(n, MGSM_QUESTIONS)]
    if len(rows) < min(n, MGSM_QUESTIONS):
        raise DataError(
            f"GSM8K test has {len(rows)} questions: the CoT proxy needs its first {min(n, MGSM_QUESTIONS)} (MGSM's questions)"
        )
    return rows


def evaluate_proxy_cot(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    shots: int = DEFAULT_SHOTS,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
    offset: int = 0,
) -> EvalResult:
    """``log p(" " + English gold worked solution | mgsm_en_cot prompt with the question in lang)``.

    ``offset`` skips the first examples of the ``limit`` (a halving sweep scores one block at a time)."""
    from layerswap.evaluate.answers import gsm8k_gold
    from layerswap.evaluate.loglik import loglikelihood, summarise_logprobs
    from layerswap.evaluate.mgsm import load_examples, load_exemplars
    from layerswap.evaluate.result import take
    from layerswap.evaluate.uncertainty import mean_columns, with_uncertainty

    check_shots(shots)
    for lang in langs:
        check_language(lang)

    def one(lm: LoadedModel, lang: str) -> EvalResult:
        examples = take(load_examples(lang, data_dir=data_dir, limit=limit), limit)
        english = english_solutions(len(examples), data_dir)
        exemplars = load_exemplars(lang, data_dir=data_dir) if shots else []
        pairs = []
        examples = examples[offset:]
        for i, ex in enumerate(examples, start=offset):
            if gsm8k_gold(english[i][1]) != ex.gold:
                raise DataError(
                    f"MGSM-{lang} question {i} has answer {ex.gold} but GSM8K test question {i} has {gsm8k_gold(english[i][1])}: "
                    "the CoT proxy needs MGSM's questions in GSM8K test order (use the unmodified releases)"
                )
            pairs.append((en_cot_prompt(lang, ex.question, exemplars, shots), " " + en_cot_solution(english[i][1])))
        scored, seconds = timed(lambda: loglikelihood(lm, pairs, batch_size=batch_size, desc=f"proxy_cot_{lang}"))
        records = [
            {
                "task": "proxy_cot",
                "lang": lang,
                "id": ex.id,
                "gold": ex.gold,
                "logprob": s.logprob,
                "tokens": s.n_tokens,
                "greedy": s.greedy,
            }
            for ex, s in zip(examples, scored, strict=True)
        ]
        sums = summarise_logprobs(scored)
        row = {
            "task": "proxy_cot",
            "format": "en_cot",
            "lang": lang,
            "shots": shots,
            "n": sums["n"],
            "solution_logprob": sums["gold_logprob"],
            "solution_logprob_per_token": sums["gold_logprob_per_token"],
            "seconds": seconds,
        }
        return one_row(
            records,
            with_uncertainty(row, "solution_logprob", mean_columns([s.logprob for s in scored], task="proxy_cot", lang=lang)),
        )

    return per_language(model, tokenizer, langs, one)


TASK = TaskSpec(
    name="proxy_cot",
    summary="log p(English gold worked solution | question in the language), lm-eval's mgsm_en_cot prompt: a proxy for CoT experts",
    run=request_runner(evaluate_proxy_cot),
    metric="solution_logprob",
    default_shots=DEFAULT_SHOTS,
    score_field="logprob",
    extra_metrics=("solution_logprob_per_token",),
    training_refused=("mgsm", "gsm8k:test"),
    check_language=check_language,
    check_shots=check_shots,
    scores_blocks=True,
)
