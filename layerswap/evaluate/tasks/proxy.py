"""The sweep's fast proxy: ``log p(gold answer sentence | native CoT prompt)``, one forward each.

A proxy, not accuracy: it rewards a model that would state the right number straight after the
cue, skipping the reasoning. Use it to rank sweep candidates, then confirm with MGSM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.generation import GenerationTask
from layerswap.evaluate.mgsm import MGSM_LANGUAGES, check_language, check_shots, load_examples, load_exemplars, make_task
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel

DEFAULT_SHOTS = 2


def proxy_pair(task: GenerationTask, lang: str, question: str, gold: str) -> tuple[str, str]:
    """Context = the fixed CoT prompt; continuation = the language's answer sentence with the gold
    number (``" Jibu ni 18."``)."""
    return task.prompt(question), " " + MGSM_LANGUAGES[lang].phrase.format(n=gold)


def evaluate_proxy(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    shots: int = DEFAULT_SHOTS,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """The sweep's fast proxy: ``log p(gold answer sentence | native CoT prompt)``, one forward each.

    A proxy, not accuracy: it rewards a model that would state the right number straight after
    the cue, skipping the reasoning. Use it to rank sweep candidates, then confirm with MGSM.
    """
    from layerswap.evaluate.loglik import loglikelihood, summarise_logprobs
    from layerswap.evaluate.result import EvalResult, as_lm, take
    from layerswap.evaluate.uncertainty import mean_columns, with_uncertainty

    check_shots(shots)
    for lang in langs:
        check_language(lang)
    lm = as_lm(model, tokenizer)
    result = EvalResult()
    for lang in langs:
        exemplars = load_exemplars(lang, data_dir=data_dir) if shots else None
        task = make_task(lang, "native_cot", shots=shots, exemplars=exemplars)
        examples = take(load_examples(lang, data_dir=data_dir, limit=limit), limit)
        pairs = [proxy_pair(task, lang, ex.question, ex.gold) for ex in examples]
        t0 = time.perf_counter()
        scored = loglikelihood(lm, pairs, batch_size=batch_size, desc=f"proxy_{lang}")
        seconds = time.perf_counter() - t0
        for ex, (_, cont), s in zip(examples, pairs, scored, strict=True):
            result.records.append(
                {"task": "proxy", "lang": lang, "id": ex.id, "continuation": cont, "gold": ex.gold, "logprob": s.logprob, "tokens": s.n_tokens, "greedy": s.greedy}
            )
        row = {"task": "proxy", "format": "native_cot", "lang": lang, "shots": shots, **summarise_logprobs(scored), "seconds": round(seconds, 2)}
        row = with_uncertainty(row, "gold_logprob", mean_columns([s.logprob for s in scored]))
        result.extend(EvalResult.of([], [row]))
    return result


def next_to_mgsm(summary: pd.DataFrame) -> pd.DataFrame:
    """Copy the proxy's gold log-likelihood onto the MGSM rows of the same language (when both ran)."""
    if summary.empty or "gold_logprob" not in summary or "exact_match" not in summary:
        return summary
    proxy = summary[summary["task"] == "proxy"].set_index("lang")["gold_logprob"]
    is_mgsm = summary["task"] == "mgsm"
    summary.loc[is_mgsm, "gold_logprob"] = summary.loc[is_mgsm, "lang"].map(proxy)
    return summary


def _run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
    return evaluate_proxy(lm, req.langs, shots=req.shots, limit=req.limit, batch_size=req.batch_size, data_dir=req.data_dir)


TASK = TaskSpec(
    name="proxy",
    summary="log p(gold answer sentence | 2-shot native CoT prompt), the sweep's fast MGSM proxy",
    run=_run,
    metric="gold_logprob",
    default_shots=DEFAULT_SHOTS,
    score_field="logprob",
    extra_metrics=("gold_logprob_per_token",),
    training_refused=("mgsm",),
    check_language=check_language,
    check_shots=check_shots,
    finish=next_to_mgsm,
)
