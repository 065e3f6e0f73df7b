"""How each corpus names a language: one :class:`Language` per MGSM code, and the aliases users write."""

from __future__ import annotations

from dataclasses import dataclass

from layerswap.errors import ConfigError, DataError


@dataclass(frozen=True)
class Language:
    """One language as each corpus names it (None where the corpus lacks it)."""

    code: str  # MGSM / ISO 639-1 code used everywhere in layerswap
    name: str
    flores: str | None
    ntrex: str | None
    tico: str | None = None  # folder eng-<x>
    tatoeba: str | None = None  # folder name


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("en", "English", "eng_Latn", "eng"),
        Language("sw", "Swahili", "swh_Latn", "swa", tico="eng-swa", tatoeba="eng-swa"),
        Language("bn", "Bengali", "ben_Beng", "ben", tico="eng-ben", tatoeba="ben-eng"),
        Language("te", "Telugu", "tel_Telu", "tel", tatoeba="eng-tel"),
        Language("th", "Thai", "tha_Thai", "tha"),
        Language("ja", "Japanese", "jpn_Jpan", "jpn"),
        Language("zh", "Chinese", "zho_Hans", "zho-CN"),
        Language("ru", "Russian", "rus_Cyrl", "rus"),
        Language("es", "Spanish", "spa_Latn", "spa"),
        Language("fr", "French", "fra_Latn", "fra"),
        Language("de", "German", "deu_Latn", "deu"),
    )
}
_ALIASES = {"swa": "sw", "swh": "sw", "ben": "bn", "tel": "te", "tha": "th", "jpn": "ja", "zho": "zh", "rus": "ru", "spa": "es", "fra": "fr", "deu": "de", "eng": "en"}


def language(code: str) -> Language:
    """Resolve ``sw``/``swa``/``swh_Latn`` to a :class:`Language`; unknown codes list the valid ones."""
    key = code.strip().split("_")[0]
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise DataError(f"unknown language {code!r}: valid languages are {', '.join(LANGUAGES)}")
    return LANGUAGES[key]


def parse_languages(spec: str | list[str]) -> list[Language]:
    """``"sw,bn,te"`` or a list of codes -> their languages (at least one)."""
    items = spec if isinstance(spec, list) else [s for s in str(spec).split(",") if s.strip()]
    if not items:
        raise DataError("no language given: pass e.g. --langs sw,bn,te")
    refuse_repeated([str(s).strip() for s in items], "languages")
    return [language(s) for s in items]


def refuse_repeated(values: list[str] | tuple[str, ...], what: str) -> None:
    """A list of languages or tasks naming one twice would score its examples twice (and weigh them double)."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ConfigError(f"{what} names {value!r} twice: its examples would be counted twice; list each once")
        seen.add(value)
