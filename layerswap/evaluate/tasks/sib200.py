"""SIB-200 topic accuracy: the label with the highest ``log p(" label" | text + "\\nTopic:")``.

A language-understanding check; its sentences are FLORES sentences, so both are refused for training.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import InputPathError
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec
from layerswap.io import iter_tsv, language, require_fields, resolve_data_dir

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel

SIB_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
SIB_TEMPLATE = "{text}\nTopic:"


def load_rows(code: str, root: Path | None, split: str) -> list[tuple[str, str]]:
    """(text, category) pairs of a FLORES code's split, from ``<data>/sib200/<code>/<split>.tsv`` or the Hub."""
    if root is not None:
        path = root / "sib200" / code / f"{split}.tsv"
        rows = []
        for lineno, rec in iter_tsv(path):
            require_fields(rec, ["category", "text"], path=path, lineno=lineno)
            rows.append((rec["text"], rec["category"]))
        return rows
    try:
        import datasets

        return [(d["text"], d["category"]) for d in datasets.load_dataset("Davlan/sib200", code, split=split)]
    except Exception as exc:
        raise InputPathError(f"no local data folder and SIB-200 {code} could not be loaded ({exc}): pass --data-dir") from exc


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
    from layerswap.evaluate.result import EvalResult, as_lm, take
    from layerswap.evaluate.uncertainty import mean_columns

    codes = [language(lang) for lang in langs]
    root = resolve_data_dir(data_dir)
    lm = as_lm(model, tokenizer)
    result = EvalResult()
    for lg in codes:
        rows = take(load_rows(lg.flores, root, split), limit)
        pairs = [(SIB_TEMPLATE.format(text=text), " " + label) for text, _ in rows for label in SIB_LABELS]
        t0 = time.perf_counter()
        scored = loglikelihood(lm, pairs, batch_size=batch_size, desc=f"sib200_{lg.code}")
        seconds = time.perf_counter() - t0
        hits: list[bool] = []
        for i, (text, gold) in enumerate(rows):
            scores = [s.logprob for s in scored[i * len(SIB_LABELS) : (i + 1) * len(SIB_LABELS)]]
            pred = SIB_LABELS[max(range(len(scores)), key=scores.__getitem__)]
            hits.append(pred == gold)
            result.records.append({"task": "sib200", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": text, "gold": gold, "answer": pred, "correct": pred == gold})
        row = {"task": "sib200", "lang": lg.code, "n": len(rows), "accuracy": sum(hits) / len(rows), **mean_columns(hits), "seconds": round(seconds, 2)}
        result.extend(EvalResult.of([], [row]))
    return result


def _run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
    return evaluate_sib200(lm, req.langs, limit=req.limit, batch_size=req.batch_size, data_dir=req.data_dir)


TASK = TaskSpec(
    name="sib200",
    summary="SIB-200 topic accuracy by label log-likelihood (7 classes)",
    run=_run,
    metric="accuracy",
    training_refused=("sib200", "sib"),
)
