"""The sweep's fast proxy: ``log p(gold answer sentence | native CoT prompt)``, one forward each.

A proxy, not accuracy: it rewards a model that would state the right number straight after the
cue, skipping the reasoning. Use it to rank sweep candidates, then confirm with MGSM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.generation import GenerationTask
from layerswap.evaluate.mgsm import MGSM_LANGUAGES, check_language, check_shots, load_examples, load_task
from layerswap.evaluate.tasks._common import one_row, per_language, request_runner, timed
from layerswap.evaluate.tasks.spec import TaskSpec

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
    offset: int = 0,
) -> EvalResult:
    """The sweep's fast proxy: ``log p(gold answer sentence | native CoT prompt)``, one forward each.

    A proxy, not accuracy: it rewards a model that would state the right number straight after
    the cue, skipping the reasoning. Use it to rank sweep candidates, then confirm with MGSM.
    ``offset`` skips the first examples of the ``limit`` (a halving sweep scores one block at a time).
    """
    from layerswap.evaluate.loglik import loglikelihood, summarise_logprobs
    from layerswap.evaluate.result import take
    from layerswap.evaluate.uncertainty import mean_columns, with_uncertainty

    check_shots(shots)
    for lang in langs:
        check_language(lang)

    def one(lm: LoadedModel, lang: str) -> EvalResult:
        task = load_task(lang, "native_cot", shots=shots, data_dir=data_dir)
        examples = take(load_examples(lang, data_dir=data_dir, limit=limit), limit)[offset:]
        pairs = [proxy_pair(task, lang, ex.question, ex.gold) for ex in examples]
        scored, seconds = timed(lambda: loglikelihood(lm, pairs, batch_size=batch_size, desc=f"proxy_{lang}"))
        records = [
            {"task": "proxy", "lang": lang, "id": ex.id, "continuation": cont, "gold": ex.gold, "logprob": s.logprob, "tokens": s.n_tokens, "greedy": s.greedy}
            for ex, (_, cont), s in zip(examples, pairs, scored, strict=True)
        ]
        row = {"task": "proxy", "format": "native_cot", "lang": lang, "shots": shots, **summarise_logprobs(scored), "seconds": seconds}
        return one_row(records, with_uncertainty(row, "gold_logprob", mean_columns([s.logprob for s in scored], task="proxy", lang=lang)))

    return per_language(model, tokenizer, langs, one)


def next_to_mgsm(summary: pd.DataFrame) -> pd.DataFrame:
    """Copy the proxy's gold log-likelihood onto the MGSM rows of the same language (when both ran)."""
    if summary.empty or "gold_logprob" not in summary or "exact_match" not in summary:
        return summary
    proxy = summary[summary["task"] == "proxy"].set_index("lang")["gold_logprob"]
    is_mgsm = summary["task"] == "mgsm"
    if not is_mgsm.any():  # e.g. exact_match came from an lm_eval: task
        return summary
    summary.loc[is_mgsm, "gold_logprob"] = summary.loc[is_mgsm, "lang"].map(proxy)
    return summary


TASK = TaskSpec(
    name="proxy",
    summary="log p(gold answer sentence | 2-shot native CoT prompt), the sweep's fast MGSM proxy",
    run=request_runner(evaluate_proxy),
    metric="gold_logprob",
    default_shots=DEFAULT_SHOTS,
    score_field="logprob",
    extra_metrics=("gold_logprob_per_token",),
    training_refused=("mgsm",),
    check_language=check_language,
    check_shots=check_shots,
    scores_blocks=True,
    finish=next_to_mgsm,
)
