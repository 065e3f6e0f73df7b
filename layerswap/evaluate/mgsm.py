"""MGSM in its 11 languages, in lm-evaluation-harness's ``direct`` and ``native_cot`` formats.

The words below are copied from lm-eval 0.4's ``tasks/mgsm/utils.py`` and the generated
``mgsm_direct_<lang>.yaml`` / ``mgsm_native_cot_<lang>.yaml`` (including their quirks: the
non-English ``direct`` cue is ``Answer:`` except in de/es/fr; the Bengali strict pattern is the
English ``The answer is``; few-shot answers drop ``len(cue) + 1`` characters, as lm-eval's
``answer[N:]`` does). Prompts are checked against lm-eval itself in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from layerswap.errors import ConfigError, DataError, InputPathError
from layerswap.evaluate.answers import Extractor, flexible_extractor, normalise_number, strict_extractor
from layerswap.evaluate.generation import Example, GenerationTask
from layerswap.io import iter_records, iter_tsv, read_data_json, require_fields, resolve_data_dir

MAX_SHOTS = 8
FORMATS = ("direct", "native_cot")
FEWSHOT_DELIMITER = "\n\n"
STOP_EXTRA = ("</s>", "<|im_end|>")


@dataclass(frozen=True)
class MgsmLanguage:
    question: str  # "Swali:" -- the question prefix, also the stop string
    answer: str  # "Jibu la Hatua kwa Hatua:" -- the native chain-of-thought cue
    direct: str  # "Answer:" -- the direct-answer cue
    regex: str  # the strict "The answer is N" pattern of the language
    phrase: str  # that pattern as a sentence with {n}: the proxy's gold continuation


MGSM_LANGUAGES: dict[str, MgsmLanguage] = {
    "bn": MgsmLanguage("প্রশ্ন:", "ধাপে ধাপে উত্তর:", "Answer:", r"The answer is (\-?[0-9\.\,]+)", "The answer is {n}."),
    "de": MgsmLanguage("Frage:", "Schritt-für-Schritt-Antwort:", "Antwort:", r"Die Antwort lautet (\-?[0-9\.\,]+)", "Die Antwort lautet {n}."),
    "en": MgsmLanguage("Question:", "Step-by-Step Answer:", "Answer:", r"The answer is (\-?[0-9\.\,]+)", "The answer is {n}."),
    "es": MgsmLanguage("Pregunta:", "Respuesta paso a paso:", "Respuesta:", r"La respuesta es (\-?[0-9\.\,]+)", "La respuesta es {n}."),
    "fr": MgsmLanguage("Question :", "Réponse étape par étape :", "Réponse :", r"La réponse est (\-?[0-9\.\,]+)", "La réponse est {n}."),
    "ru": MgsmLanguage("Задача:", "Пошаговоерешение:", "Answer:", r"Ответ — (\-?[0-9\.\,]+)", "Ответ — {n}."),
    "sw": MgsmLanguage("Swali:", "Jibu la Hatua kwa Hatua:", "Answer:", r"Jibu ni (\-?[0-9\.\,]+)", "Jibu ni {n}."),
    "te": MgsmLanguage("ప్రశ్న:", "దశలవారీగా సమాధానం:", "Answer:", r"సమాధానం (\-?[0-9\.\,]+)", "సమాధానం {n}."),
    "th": MgsmLanguage("โจทย์:", "คำตอบทีละขั้นตอน:", "Answer:", r"คำตอบคือ (\-?[0-9\.\,]+)", "คำตอบคือ {n}."),
    "ja": MgsmLanguage("問題：", "ステップごとの答え:", "Answer:", r"答えは(\-?[0-9\.\,]+)です。", "答えは{n}です。"),
    "zh": MgsmLanguage("问题：", "逐步解答:", "Answer:", r"答案是 (\-?[0-9\.\,]+)。", "答案是 {n}。"),
}


@dataclass(frozen=True)
class Exemplar:
    question: str  # with the language's own question prefix, as in the release
    answer: str  # with the language's own cue
    number: str


def check_language(lang: str) -> str:
    if lang not in MGSM_LANGUAGES:
        raise DataError(f"unknown MGSM language {lang!r}: valid languages are {', '.join(MGSM_LANGUAGES)}")
    return lang


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown MGSM format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    return fmt


def check_shots(shots: int, available: int = MAX_SHOTS) -> int:
    if shots < 0 or shots > available:
        raise ConfigError(f"--shots {shots} is out of range: MGSM has {available} exemplars per language, pass 0..{available}")
    return shots


def _data_dir(data_dir: str | Path | None) -> Path | None:
    return resolve_data_dir(data_dir) if data_dir is not None else resolve_data_dir(None)


#: The columns of an MGSM file given by path (the ``juletxara/mgsm`` layout, one file for every language).
VARIANT_COLUMNS = ("question", "answer_number", "language")


def load_examples(
    lang: str, *, data_dir: str | Path | None = None, limit: int | None = None, path: str | Path | None = None
) -> list[Example]:
    """MGSM test questions of ``lang`` from ``path`` (a variant such as the corrected release: a
    JSONL, or a TSV with a header, with columns ``question``, ``answer_number``, ``language``; the
    rows of ``lang`` in file order), else ``<data>/mgsm/mgsm_<lang>.tsv``, else the Hub."""
    check_language(lang)
    if path is not None:
        examples = [Example(f"{lang}-{i}", q, gold) for i, (q, gold) in enumerate(load_variant(path).get(lang, []))]
        if not examples:
            raise DataError(f"{path} holds no questions whose language is {lang!r}: pick languages the file has, or another file")
        return examples[:limit] if limit is not None else examples
    root = _data_dir(data_dir)
    examples: list[Example] = []
    if root is not None:
        tsv = root / "mgsm" / f"mgsm_{lang}.tsv"
        for lineno, row in iter_tsv(tsv, header=False, fieldnames=["question", "answer"]):
            if not row.get("question") or not row.get("answer"):
                raise DataError(f"{tsv} line {lineno} lacks a question or an answer column: expected question<TAB>answer")
            examples.append(Example(f"{lang}-{len(examples)}", row["question"], normalise_number(row["answer"])))
            if limit is not None and len(examples) >= limit:
                break
    else:
        for i, doc in enumerate(_hub_split(lang, "test")):
            if limit is not None and i >= limit:
                break
            examples.append(Example(f"{lang}-{i}", doc["question"], normalise_number(str(doc["answer_number"]))))
    if not examples:
        raise DataError(f"no MGSM questions found for {lang}")
    return examples


def load_variant(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """``{language: [(question, gold number), ...]}`` of an MGSM file laid out as :data:`VARIANT_COLUMNS`
    (``.jsonl``/``.json`` lines, or ``.tsv`` with a header row); every row is checked, naming its line."""
    path = Path(path)
    rows = iter_records(path, hint=f"an MGSM variant is a .jsonl file or a .tsv file with a header row ({', '.join(VARIANT_COLUMNS)})")
    out: dict[str, list[tuple[str, str]]] = {}
    for lineno, rec in rows:
        require_fields(rec, list(VARIANT_COLUMNS), path=path, lineno=lineno)
        lang = str(rec["language"]).strip()
        if lang not in MGSM_LANGUAGES:
            raise DataError(f"{path} line {lineno}: unknown MGSM language {lang!r}: valid languages are {', '.join(MGSM_LANGUAGES)}")
        gold = normalise_number(str(rec["answer_number"]))
        if not re.fullmatch(r"-?\d+(\.\d+)?", gold):
            raise DataError(f"{path} line {lineno}: answer_number {rec['answer_number']!r} is not a number: fix that line")
        out.setdefault(lang, []).append((str(rec["question"]), gold))
    if not out:
        raise DataError(f"{path} holds no questions")
    return out


def _hub_split(lang: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError as exc:
        raise InputPathError("no local data folder and no `datasets` package: pass --data-dir or pip install datasets") from exc
    try:
        return list(datasets.load_dataset("juletxara/mgsm", lang, split=split))
    except Exception as exc:  # network, auth, missing config
        raise InputPathError(f"cannot load juletxara/mgsm ({lang}, {split}) from the Hub ({exc}): pass --data-dir with a local copy") from exc


def load_exemplars(lang: str, *, data_dir: str | Path | None = None) -> list[Exemplar]:
    """The 8 MGSM exemplars of ``lang`` (local ``mgsm_exemplars.json`` or the Hub train split)."""
    check_language(lang)
    root = _data_dir(data_dir)
    if root is None:
        return [Exemplar(d["question"], d["answer"], normalise_number(str(d["answer_number"]))) for d in _hub_split(lang, "train")]
    path = root / "mgsm" / "mgsm_exemplars.json"
    if not path.exists():
        raise InputPathError(f"{path} does not exist: the few-shot exemplars are needed for --shots > 0")
    data = read_data_json(path)  # a cut or edited file is one line
    try:
        shots = data["MGSM_EXEMPLARS"][lang]
        numbers = data["EXEMPLAR_NUMBER_ANSWERS"]
        return [Exemplar(shots[str(i + 1)]["q"], shots[str(i + 1)]["a"], normalise_number(str(numbers[i]))) for i in range(len(shots))]
    except (KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{path} is not laid out as MGSM_EXEMPLARS[lang]['1'..'8'] = {{q, a}} ({exc})") from None


def fewshot_block(lang: str, fmt: str, exemplars: list[Exemplar], shots: int) -> str:
    """The few-shot prefix exactly as lm-eval renders the first ``shots`` train docs."""
    words = MGSM_LANGUAGES[lang]
    check_shots(shots, len(exemplars) if shots else MAX_SHOTS)
    parts = []
    for ex in exemplars[:shots]:
        if fmt == "direct":
            parts.append(f"{ex.question}\n{words.direct}{ex.number}")  # target_delimiter ""
        else:
            parts.append(f"{ex.question}\n{words.answer} {ex.answer[len(words.answer) + 1:]}")  # answer[N:]
    return "".join(p + FEWSHOT_DELIMITER for p in parts)


def make_task(lang: str, fmt: str = "native_cot", *, shots: int = 0, exemplars: list[Exemplar] | None = None) -> GenerationTask:
    """The ``mgsm_<fmt>_<lang>`` task; ``exemplars`` are needed when ``shots`` > 0."""
    check_language(lang)
    check_format(fmt)
    check_shots(shots)
    if shots and exemplars is None:
        raise ConfigError("few-shot MGSM needs the exemplars: pass exemplars=load_exemplars(lang)")
    words = MGSM_LANGUAGES[lang]
    cue = words.direct if fmt == "direct" else words.answer
    extractors: tuple[Extractor, ...]
    if fmt == "direct":
        extractors = (Extractor("remove_whitespace"), flexible_extractor())
        order: tuple[str, ...] = ("flexible-extract",)
    else:
        extractors = (strict_extractor(words.regex), flexible_extractor())
        order = ("strict-match", "flexible-extract")
    return GenerationTask(
        name=f"mgsm_{fmt}_{lang}",
        family="mgsm",
        lang=lang,
        template=words.question + " {question}\n" + cue,
        stop=(words.question, *STOP_EXTRA),
        extractors=extractors,
        answer_order=order,
        fewshot=fewshot_block(lang, fmt, exemplars or [], shots) if shots else "",
        shots=shots,
        fmt=fmt,
    )


def load_task(lang: str, fmt: str = "native_cot", *, shots: int = 0, data_dir: str | Path | None = None) -> GenerationTask:
    """:func:`make_task` with the language's exemplars loaded when ``shots`` asks for any."""
    exemplars = load_exemplars(lang, data_dir=data_dir) if shots else None
    return make_task(lang, fmt, shots=shots, exemplars=exemplars)
