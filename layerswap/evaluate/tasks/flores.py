"""FLORES-200 devtest bits per byte: ``-sum log2 p(line | BOS) / UTF-8 bytes`` over the lines.

A language check (did the merge keep the language?): per byte, not per token, so models with
different tokenizers compare; lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerswap.errors import DataError
from layerswap.evaluate.tasks._common import hub_rows, one_row, per_data_language, request_runner, timed
from layerswap.evaluate.tasks.spec import TaskSpec
from layerswap.io import read_lines

if TYPE_CHECKING:
    from layerswap.evaluate.result import EvalResult, ModelLike
    from layerswap.evaluate.runner import LoadedModel
    from layerswap.io import Language


def load_lines(code: str, root: Path | None) -> list[str]:
    """The devtest lines of a FLORES code (``swh_Latn``), local (CSV-style quotes undone) or the Hub."""
    if root is not None:
        from layerswap.evaluate.loglik import normalise_quotes

        return [normalise_quotes(x) for x in read_lines(root / "flores200" / "devtest" / f"{code}.devtest") if x.strip()]
    return hub_rows(f"FLORES {code}", lambda d: d["text"], "openlanguagedata/flores_plus", code, split="devtest")


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
    from layerswap.evaluate.result import take
    from layerswap.evaluate.uncertainty import ratio_columns

    def one(lm: LoadedModel, lg: Language, root: Path | None) -> EvalResult:
        if lg.flores is None:
            raise DataError(f"FLORES-200 has no {lg.code}")
        lines = take(load_lines(lg.flores, root), limit)
        scored, seconds = timed(lambda: score_tokens(lm, [text_tokens(lm, x) for x in lines], batch_size=batch_size, desc=f"flores_{lg.code}"))
        n_bytes = [len(x.encode("utf-8")) for x in lines]
        records = [
            {"task": "flores", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": line, "logprob": s.logprob, "tokens": s.n_tokens, "bits": -s.logprob / math.log(2), "bytes": nb}
            for i, (line, s, nb) in enumerate(zip(lines, scored, n_bytes, strict=True))
        ]
        total = sum(s.logprob for s in scored)
        row = {
            "task": "flores",
            "lang": lg.code,
            "n": len(lines),
            "bits_per_byte": bits_per_byte(total, sum(n_bytes)),
            **ratio_columns([-s.logprob / math.log(2) for s in scored], n_bytes, task="flores", lang=lg.code),
            "tokens_per_byte": sum(s.n_tokens for s in scored) / sum(n_bytes),
            "seconds": seconds,
        }
        return one_row(records, row)

    return per_data_language(model, tokenizer, langs, data_dir, one)


TASK = TaskSpec(
    name="flores",
    summary="FLORES-200 devtest bits per byte (lower is better)",
    run=request_runner(evaluate_flores),
    metric="bits_per_byte",
    higher_is_better=False,
    score_field="bits",
    ratio_fields=("bits", "bytes"),
    training_refused=("flores", "flores200"),
)
