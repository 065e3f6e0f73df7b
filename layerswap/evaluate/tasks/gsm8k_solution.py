"""GSM8K test beyond MGSM's questions: log-likelihood per token of the gold English worked solution.

Did a math expert learn its skill? Score what it was trained to write, on questions it never saw
and that no sweep scores: GSM8K test questions 250.. (MGSM's 250 are GSM8K test 0-249, so these are
held out from every MGSM-based task), in the math expert's training format (``Question: ...\\n
Step-by-Step Answer:`` and the worked solution ending ``The answer is N.``). One forward pass per
example. The demo's expert check (:mod:`layerswap.pipeline.checks`) runs it on the base and on the
math expert and pairs the two per question; it is a registered task so that the check is an
ordinary ``layerswap evaluate --task gsm8k_solution --langs en`` anyone can rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import ConfigError, DataError
from layerswap.evaluate.tasks._common import one_row, request_runner, timed
from layerswap.evaluate.tasks.proxy_cot import MGSM_QUESTIONS, en_cot_solution
from layerswap.evaluate.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike


def check_language(lang: str) -> None:
    """GSM8K is English only."""
    if lang != "en":
        raise ConfigError(f"gsm8k_solution is English only: use --langs en, not {lang!r}")


def solution_pairs(n: int | None, data_dir: str | Path | None) -> list[tuple[str, str, str]]:
    """``(id, prompt, continuation)`` of GSM8K test questions 250..250+n-1, in the math expert's training format."""
    from layerswap.evaluate.tasks.gsm8k import load_rows
    from layerswap.io.records import MATH_PROMPT

    rows = load_rows("test", data_dir)[MGSM_QUESTIONS:]
    rows = rows if n is None else rows[:n]
    if len(rows) < 2:
        raise DataError(f"GSM8K test has no questions beyond MGSM's first {MGSM_QUESTIONS}: gsm8k_solution needs some")
    return [
        (f"gsm8k-test-{MGSM_QUESTIONS + i}", MATH_PROMPT.format(question=q.strip()), " " + en_cot_solution(a))
        for i, (q, a) in enumerate(rows)
    ]


def evaluate_gsm8k_solution(
    model: ModelLike,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """Mean over GSM8K test questions 250.. of the gold worked solution's log-likelihood per token (nats)."""
    from layerswap.evaluate.loglik import loglikelihood
    from layerswap.evaluate.result import as_lm
    from layerswap.evaluate.uncertainty import mean_columns, with_uncertainty

    lm = as_lm(model, tokenizer)
    pairs = solution_pairs(limit, data_dir)
    scored, seconds = timed(
        lambda: loglikelihood(lm, [(p, c) for _, p, c in pairs], batch_size=batch_size, desc="gsm8k_solution")
    )
    per_token = [s.logprob / s.n_tokens for s in scored]
    records = [
        {"task": "gsm8k_solution", "lang": "en", "id": i, "logprob": s.logprob, "tokens": s.n_tokens, "logprob_per_token": v}
        for (i, _, _), s, v in zip(pairs, scored, per_token, strict=True)
    ]
    row = {
        "task": "gsm8k_solution",
        "format": "en_cot",
        "lang": "en",
        "shots": 0,
        "n": len(records),
        "solution_logprob_per_token": sum(per_token) / len(per_token),
        "seconds": seconds,
    }
    columns = mean_columns(per_token, task="gsm8k_solution", lang="en")
    return one_row(records, with_uncertainty(row, "solution_logprob_per_token", columns))


TASK = TaskSpec(
    name="gsm8k_solution",
    summary="GSM8K test questions 250.. (after MGSM's): log-likelihood per token of the gold English worked solution (English only; the demo's math check)",
    run=request_runner(evaluate_gsm8k_solution),
    metric="solution_logprob_per_token",
    score_field="logprob_per_token",
    training_refused=("gsm8k:test",),
    check_language=check_language,
    in_sweep=False,
)
