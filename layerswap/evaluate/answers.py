"""Answer extraction and comparison, mirroring lm-evaluation-harness filters and ``exact_match``.

Why mirror rather than improve: MGSM numbers reported by different tools must be comparable, so
the regexes, ``group_select`` and fallback behave exactly like lm-eval's ``regex`` and
``remove_whitespace`` filters, and correctness is lm-eval's ``exact_match`` with
``ignore_case`` and ``ignore_punctuation`` (which drops thousands separators: ``2,125`` == ``2125``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

FALLBACK = "[invalid]"
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True)
class Extractor:
    """One named filter: a regex (lm-eval ``regex`` filter) or ``None`` for ``remove_whitespace``."""

    name: str
    pattern: str | None = None
    group_select: int = 0
    fallback: str = FALLBACK
    _compiled: re.Pattern | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def __call__(self, text: str | None) -> str:
        text = text if isinstance(text, str) else ""
        if self._compiled is None:
            return text.strip()
        found = self._compiled.findall(text)
        if not found:
            return self.fallback
        match = found[self.group_select]
        if isinstance(match, tuple):
            groups = [m for m in match if m]
            if not groups:
                return self.fallback
            match = groups[0]
        return match.strip()


def flexible_extractor() -> Extractor:
    """lm-eval's ``flexible-extract``: the last number-like span of the output."""
    return Extractor("flexible-extract", FLEXIBLE_PATTERN, group_select=-1)


def strict_extractor(pattern: str) -> Extractor:
    """lm-eval's ``strict-match``: the first capture of the language's "The answer is N" pattern."""
    return Extractor("strict-match", pattern)


def lm_eval_normalise(text: str) -> str:
    """lm-eval ``exact_match`` with ``ignore_case`` and ``ignore_punctuation``."""
    return text.lower().translate(_PUNCT_TABLE)


def exact_match(prediction: str, gold: str) -> bool:
    """True when both agree after lower-casing and removing ASCII punctuation (lm-eval semantics)."""
    return lm_eval_normalise(prediction) == lm_eval_normalise(gold)


def normalise_number(text: str) -> str:
    """``"$2,125."`` -> ``"2125"``: strip currency, thousands separators and a trailing period.

    Used for gold answers read from files (MGSM TSVs keep separators); ``exact_match`` is still
    the lm-eval comparison.
    """
    value = text.strip().replace("$", "").replace(",", "").rstrip(".")
    if re.fullmatch(r"-?\d+\.0+", value):
        value = value.split(".")[0]
    return value


def gsm8k_gold(answer: str) -> str:
    """The final number of a GSM8K-style worked answer (after ``####``), or the text itself."""
    if "####" in answer:
        answer = answer.split("####")[-1]
    return normalise_number(answer)


def first_answer(extracted: dict[str, str], order: tuple[str, ...]) -> str:
    """The first filter in ``order`` that found something (strict, then the flexible fallback)."""
    for name in order:
        value = extracted.get(name, FALLBACK)
        if value != FALLBACK and value != "":
            return value
    return extracted.get(order[-1], FALLBACK) if order else FALLBACK
