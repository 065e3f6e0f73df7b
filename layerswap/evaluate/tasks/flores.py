"""FLORES-200 devtest bits per byte: ``-sum log2 p(line | BOS) / UTF-8 bytes`` over the lines.

A language check (did the merge keep the language?): per byte, not per token, so models with
different tokenizers compare; lower is better.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import DataError, InputPathError
from layerswap.evaluate.tasks.spec import EvalRequest, TaskSpec
from layerswap.io import language, read_lines, resolve_data_dir

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel


def load_lines(code: str, root: Path | None) -> list[str]:
    """The devtest lines of a FLORES code (``swh_Latn``), local (CSV-style quotes undone) or the Hub."""
    if root is not None:
        from layerswap.evaluate.loglik import normalise_quotes

        return [normalise_quotes(x) for x in read_lines(root / "flores200" / "devtest" / f"{code}.devtest") if x.strip()]
    try:
        import datasets

        return [d["text"] for d in datasets.load_dataset("openlanguagedata/flores_plus", code, split="devtest")]
    except Exception as exc:
        raise InputPathError(f"no local data folder and FLORES {code} could not be loaded ({exc}): pass --data-dir") from exc


def evaluate_flores(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """FLORES-200 devtest bits per byte: ``-sum log2 p(line | BOS) / UTF-8 bytes`` over the lines."""
    from layerswap.evaluate.loglik import bits_per_byte, score_tokens, text_tokens
    from layerswap.evaluate.result import EvalResult, as_lm, take
    from layerswap.evaluate.uncertainty import ratio_columns

    codes = [language(lang) for lang in langs]
    root = resolve_data_dir(data_dir)
    lm = as_lm(model, tokenizer)
    result = EvalResult()
    for lg in codes:
        if lg.flores is None:
            raise DataError(f"FLORES-200 has no {lg.code}")
        lines = take(load_lines(lg.flores, root), limit)
        t0 = time.perf_counter()
        scored = score_tokens(lm, [text_tokens(lm, x) for x in lines], batch_size=batch_size, desc=f"flores_{lg.code}")
        seconds = time.perf_counter() - t0
        n_bytes = [len(x.encode("utf-8")) for x in lines]
        for i, (line, s, nb) in enumerate(zip(lines, scored, n_bytes, strict=True)):
            result.records.append({"task": "flores", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": line, "logprob": s.logprob, "tokens": s.n_tokens, "bits": -s.logprob / math.log(2), "bytes": nb})
        total = sum(s.logprob for s in scored)
        row = {
            "task": "flores",
            "lang": lg.code,
            "n": len(lines),
            "bits_per_byte": bits_per_byte(total, sum(n_bytes)),
            **ratio_columns([-s.logprob / math.log(2) for s in scored], n_bytes),
            "tokens_per_byte": sum(s.n_tokens for s in scored) / sum(n_bytes),
            "seconds": round(seconds, 2),
        }
        result.extend(EvalResult.of([], [row]))
    return result


def _run(lm: LoadedModel, req: EvalRequest) -> EvalResult:
    return evaluate_flores(lm, req.langs, limit=req.limit, batch_size=req.batch_size, data_dir=req.data_dir)


TASK = TaskSpec(
    name="flores",
    summary="FLORES-200 devtest bits per byte (lower is better)",
    run=_run,
    metric="bits_per_byte",
    higher_is_better=False,
    score_field="bits",
    ratio_fields=("bits", "bytes"),
    training_refused=("flores", "flores200"),
)
