"""SIB-200 topic accuracy: the label with the highest ``log p(" label" | text + "\\nTopic:")``.

A language-understanding check; its sentences are FLORES sentences, so both are refused for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.evaluate.tasks._common import hub_rows, local_rows, one_row, per_data_language, request_runner, timed
from layerswap.evaluate.tasks.spec import TaskSpec
from layerswap.io import iter_tsv

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel
    from layerswap.io import Language

SIB_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
SIB_TEMPLATE = "{text}\nTopic:"


def load_rows(code: str, root: Path | None, split: str) -> list[tuple[str, str]]:
    """(text, category) pairs of a FLORES code's split, from ``<data>/sib200/<code>/<split>.tsv`` or the Hub."""
    if root is not None:
        return local_rows(iter_tsv, root / "sib200" / code / f"{split}.tsv", ("category", "text"), ("text", "category"))
    return hub_rows(f"SIB-200 {code}", lambda d: (d["text"], d["category"]), "Davlan/sib200", code, split=split)


def evaluate_sib200(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    limit: int | None = None,
    batch_size: int = 8,
    split: str = "test",
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """SIB-200 topic accuracy: the label with the highest ``log p(" label" | text + "\\nTopic:")``."""
    from layerswap.evaluate.loglik import loglikelihood
    from layerswap.evaluate.result import take
    from layerswap.evaluate.uncertainty import mean_columns

    def one(lm: LoadedModel, lg: Language, root: Path | None) -> EvalResult:
        rows = take(load_rows(lg.flores, root, split), limit)
        pairs = [(SIB_TEMPLATE.format(text=text), " " + label) for text, _ in rows for label in SIB_LABELS]
        scored, seconds = timed(lambda: loglikelihood(lm, pairs, batch_size=batch_size, desc=f"sib200_{lg.code}"))
        hits: list[bool] = []
        records = []
        for i, (text, gold) in enumerate(rows):
            scores = [s.logprob for s in scored[i * len(SIB_LABELS) : (i + 1) * len(SIB_LABELS)]]
            pred = SIB_LABELS[max(range(len(scores)), key=scores.__getitem__)]
            hits.append(pred == gold)
            records.append({"task": "sib200", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": text, "gold": gold, "answer": pred, "correct": pred == gold})
        row = {"task": "sib200", "lang": lg.code, "n": len(rows), "accuracy": sum(hits) / len(rows), **mean_columns(hits, task="sib200", lang=lg.code), "seconds": seconds}
        return one_row(records, row)

    return per_data_language(model, tokenizer, langs, data_dir, one)


TASK = TaskSpec(
    name="sib200",
    summary="SIB-200 topic accuracy by label log-likelihood (7 classes)",
    run=request_runner(evaluate_sib200),
    metric="accuracy",
    training_refused=("sib200", "sib"),
)
