"""Data specs and the records they name: shared by fine-tuning and importance (and refused by evaluation).

A *spec* names a source and, after ``?``, options as ``key=value`` pairs separated by ``,`` or ``&``:

    gsm8k                         GSM8K train (math: question -> worked solution ending "#### N")
    ntrex:sw   tico:sw   tatoeba:sw  target-language text (documents)
    ntrex:sw?format=pairs         English -> Swahili translation pairs
    data/train.jsonl?prompt=q,completion=a   local JSONL/TSV with named fields
    notes.txt                     local plain text, one document per line
    hf:openai/gsm8k?config=main,split=train,format=math   a Hugging Face dataset by name

Options: ``format`` (math | qa | pairs | text), field names (``prompt``, ``completion``,
``text``, ``source``, ``target``), ``limit`` (first N records), ``split``/``config`` (hf:),
``direction`` (pairs from corpora: ``en-xx`` or ``xx-en``), ``chat_template`` (read by fine-tuning).

:func:`load_records` reads a spec into :class:`Records` (prompt/completion pairs or texts) with no
tokenizer: tokenising and packing are the reader's business. Evaluation sets are refused
(:data:`EVALUATION_SETS`: FLORES-200, SIB-200, MGSM, GSM8K test), by shorthand, by path and by
Hub name: training on them would leak the test.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layerswap.errors import ConfigError, DataError, InputPathError
from layerswap.io.data_files import iter_jsonl, iter_text, iter_tsv, read_lines, require_fields, resolve_data_dir
from layerswap.io.languages import LANGUAGES, language

Format = Literal["math", "qa", "pairs", "text"]
FORMATS: tuple[str, ...] = ("math", "qa", "pairs", "text")

#: The math prompt matches MGSM's English exemplars, so training and evaluation agree.
MATH_PROMPT = "Question: {question}\nStep-by-Step Answer:"
PAIRS_PROMPT = "Translate from {src_name} to {tgt_name}.\n{src_name}: {source}\n{tgt_name}:"
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_SHORTHANDS = ("gsm8k", "ntrex", "tico", "tatoeba")

#: Data-spec names of evaluation data -> why training on it is refused. The evaluation tasks name
#: theirs here (``TaskSpec.training_refused``). Whole corpora are refused by shorthand, by a folder of
#: that name in a path and inside a Hub name; ``gsm8k:test`` is a split of an allowed corpus.
EVALUATION_SETS: dict[str, str] = {
    "flores": "FLORES-200 is an evaluation set",
    "flores200": "FLORES-200 is an evaluation set",
    "sib200": "SIB-200 sentences are FLORES sentences (an evaluation set)",
    "sib": "SIB-200 sentences are FLORES sentences (an evaluation set)",
    "mgsm": "MGSM is the evaluation set",
    "gsm8k:test": "GSM8K test holds the MGSM questions",
}
_REFUSED_CORPORA = {name: why for name, why in EVALUATION_SETS.items() if ":" not in name}
_OPTION_KEYS = {
    "format",
    "prompt",
    "completion",
    "text",
    "source",
    "target",
    "limit",
    "split",
    "config",
    "direction",
    "chat_template",
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``source`` (shorthand, ``hf:NAME`` or path) and its options."""

    raw: str
    source: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def limit(self) -> int | None:
        if "limit" not in self.options:
            return None
        try:
            value = int(self.options["limit"])
        except ValueError:
            raise ConfigError(f"data spec {self.raw!r}: limit must be a whole number") from None
        if value <= 0:
            raise ConfigError(f"data spec {self.raw!r}: limit must be positive")
        return value


def parse_spec(spec: str) -> DataSpec:
    """Split ``SOURCE?key=value,key=value`` and check the option names."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("empty data spec: pass e.g. --data gsm8k or --data ntrex:sw")
    source, _, opts = text.partition("?")
    options: dict[str, str] = {}
    for item in re.split(r"[,&]", opts) if opts else []:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _OPTION_KEYS:
            raise ConfigError(
                f"data spec {text!r}: cannot read option {item!r}; options are key=value with keys {', '.join(sorted(_OPTION_KEYS))}"
            )
        options[key] = value.strip()
    if "format" in options and options["format"] not in FORMATS:
        raise ConfigError(f"data spec {text!r}: format must be one of {', '.join(FORMATS)}")
    return DataSpec(text, source.strip(), options)


# --------------------------------------------------------------------------------------------
# Records: what a source holds before tokenization
# --------------------------------------------------------------------------------------------


@dataclass
class Records:
    """Raw records of one source: ``pairs`` of (prompt, completion) or ``texts`` (documents)."""

    format: Format
    origin: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs) if self.format != "text" else len(self.texts)


def strip_calculator(answer: str) -> str:
    """GSM8K's ``<<48/2=24>>`` calculator marks are not natural text; the ``#### N`` line stays."""
    return _CALCULATOR.sub("", answer)


def math_pair(question: str, answer: str) -> tuple[str, str]:
    """A GSM8K-style question and worked answer -> (prompt, completion) as training reads them."""
    return MATH_PROMPT.format(question=question.strip()), " " + strip_calculator(answer).strip()


def _check_not_eval(path: Path, data_dir: Path | None, raw: str) -> None:
    """Refuse evaluation files even when named by path."""
    resolved = path.resolve()
    parts = {p.lower() for p in resolved.parts}
    for key, why in _REFUSED_CORPORA.items():
        if key in parts:
            raise DataError(f"data spec {raw!r} points into {key}/: {why}; never train on it (use gsm8k, ntrex, tico or tatoeba)")
    if resolved.name == "test.jsonl" and "gsm8k" in parts:
        raise DataError(f"data spec {raw!r} is GSM8K test, which holds the MGSM questions: train on gsm8k (train.jsonl) only")


def _limit(items: list, spec: DataSpec) -> list:
    n = spec.limit
    return items[:n] if n is not None else items


def _corpus_files(kind: str, code: str, data_dir: Path, raw: str) -> tuple[Path, Path, str, Any]:
    """English and target-language files of an aligned corpus."""
    lang = language(code)
    if kind == "ntrex":
        folder = data_dir / "ntrex128"
        if lang.code == "en":  # the English source side: text only (a control for importance, say)
            return folder / "newstest2019-src.eng.txt", folder / "newstest2019-src.eng.txt", "ntrex", lang
        if lang.ntrex is None:
            raise DataError(f"data spec {raw!r}: NTREX has no target-language file for {lang.name}")
        return folder / "newstest2019-src.eng.txt", folder / f"newstest2019-ref.{lang.ntrex}.txt", "ntrex", lang
    attr = getattr(lang, kind)
    if attr is None:
        have = ", ".join(c for c, lg in LANGUAGES.items() if getattr(lg, kind))
        raise DataError(f"data spec {raw!r}: {kind} has no {lang.name} pairs here; languages with {kind} data: {have}")
    folder = data_dir / ("tico19" if kind == "tico" else "tatoeba") / attr
    stem = "tico19-test" if kind == "tico" else "tatoeba-test-v2021-08-07"
    tgt_ext = attr.replace("eng", "").strip("-")
    return folder / f"{stem}.eng", folder / f"{stem}.{tgt_ext}", kind, lang


def _ntrex_documents(lines: list[str], data_dir: Path) -> list[str]:
    """Join NTREX sentences of one news document (DOCUMENT_IDS.tsv) so packed text stays coherent."""
    ids_path = data_dir / "ntrex128" / "DOCUMENT_IDS.tsv"
    if not ids_path.exists():
        return [ln for ln in lines if ln.strip()]
    ids = list(iter_text(ids_path))  # a line at a time: bytes that are not UTF-8 name their line
    if len(ids) != len(lines):
        return [ln for ln in lines if ln.strip()]
    docs: list[list[str]] = []
    last = None
    for doc_id, line in zip(ids, lines, strict=False):
        if doc_id != last:
            docs.append([])
            last = doc_id
        if line.strip():
            docs[-1].append(line.strip())
    return ["\n".join(d) for d in docs if d]


def _load_shorthand(spec: DataSpec, data_dir: Path | None) -> Records:
    kind, _, arg = spec.source.partition(":")
    kind = kind.lower()
    if data_dir is None:
        data_dir = resolve_data_dir(None, required=True)
    assert data_dir is not None
    if kind == "gsm8k":
        if arg and arg != "train":
            raise DataError(
                f"data spec {spec.raw!r}: only GSM8K train may be used for training ({EVALUATION_SETS['gsm8k:test']})"
            )
        fmt = spec.options.get("format", "math")
        path = data_dir / "gsm8k" / "train.jsonl"
        return _load_file(path, DataSpec(spec.raw, str(path), {**spec.options, "format": fmt}), data_dir)
    if not arg:
        raise ConfigError(f"data spec {spec.raw!r} needs a language: write {kind}:sw (or :bn, :te ...)")
    eng, tgt, corpus, lang = _corpus_files(kind, arg, data_dir, spec.raw)
    for path in (eng, tgt):
        if not path.exists():
            raise InputPathError(f"data spec {spec.raw!r}: {path} does not exist; check --data-dir")
    fmt = spec.options.get("format", "text")
    tgt_lines = read_lines(tgt)
    if fmt == "text":
        texts = _ntrex_documents(tgt_lines, data_dir) if corpus == "ntrex" else [ln.strip() for ln in tgt_lines if ln.strip()]
        return Records("text", f"{corpus}:{lang.code}", texts=_limit(texts, spec))
    if fmt != "pairs":
        raise ConfigError(f"data spec {spec.raw!r}: corpora give format=text or format=pairs")
    if lang.code == "en":
        raise ConfigError(f"data spec {spec.raw!r}: English is the source side of {corpus}; pairs need a target language, e.g. {corpus}:sw")
    eng_lines = read_lines(eng)
    if len(eng_lines) != len(tgt_lines):
        raise DataError(f"{eng} and {tgt} have {len(eng_lines)} and {len(tgt_lines)} lines: aligned files must match")
    direction = spec.options.get("direction", "en-xx")
    if direction not in ("en-xx", "xx-en"):
        raise ConfigError(f"data spec {spec.raw!r}: direction must be en-xx or xx-en")
    english = language("en")
    pairs = []
    for e, t in zip(eng_lines, tgt_lines, strict=False):
        if not e.strip() or not t.strip():
            continue
        src, dst, sname, tname = (e, t, english.name, lang.name) if direction == "en-xx" else (t, e, lang.name, english.name)
        pairs.append((PAIRS_PROMPT.format(src_name=sname, tgt_name=tname, source=src.strip()), " " + dst.strip()))
    return Records("pairs", f"{corpus}:{lang.code}:{direction}", pairs=_limit(pairs, spec))


def _records_from_rows(rows: Iterable[tuple[int, dict[str, Any]]], spec: DataSpec, where: str) -> Records:
    """Turn named-field rows into records of the spec's format (inferred from the first row)."""
    opts = spec.options
    fmt: str | None = opts.get("format")
    out: Records | None = None
    fields: list[str] = []
    limit = spec.limit
    for lineno, row in rows:
        if out is None:
            if fmt is None:
                if "text" in opts or ("text" in row and "prompt" not in opts):
                    fmt = "text"
                elif "question" in row and "answer" in row and "prompt" not in opts:
                    fmt = "math"
                elif "prompt" in opts or ("prompt" in row and "completion" in row):
                    fmt = "qa"
                else:
                    raise DataError(
                        f"{where} line {lineno}: cannot tell the format from fields ({', '.join(map(str, row))}): "
                        "add ?format=math|qa|text with prompt=FIELD,completion=FIELD or text=FIELD"
                    )
            if fmt == "math":
                fields = [opts.get("prompt", "question"), opts.get("completion", "answer")]
            elif fmt in ("qa", "pairs"):
                fields = [
                    opts.get("prompt", opts.get("source", "prompt")),
                    opts.get("completion", opts.get("target", "completion")),
                ]
            else:
                fields = [opts.get("text", "text")]
            out = Records(fmt, where)  # type: ignore[arg-type]
        require_fields(row, fields, path=where, lineno=lineno)
        if out.format == "text":
            out.texts.append(str(row[fields[0]]))
        elif out.format == "math":
            out.pairs.append(math_pair(str(row[fields[0]]), str(row[fields[1]])))
        else:
            out.pairs.append((str(row[fields[0]]), str(row[fields[1]])))
        if limit is not None and len(out) >= limit:
            break
    if out is None:
        raise DataError(f"{where} holds no records: pass a non-empty data file")
    return out


def _load_file(path: Path, spec: DataSpec, data_dir: Path | None) -> Records:
    if not path.exists():
        raise InputPathError(
            f"data file {path} does not exist: pass a JSONL/TSV/text file, or a shorthand like gsm8k or ntrex:sw"
        )
    if path.is_dir():
        raise InputPathError(f"data path {path} is a folder: pass a JSONL, TSV or text file")
    _check_not_eval(path, data_dir, spec.raw)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _records_from_rows(iter_jsonl(path), spec, str(path))
    if suffix == ".tsv":
        return _records_from_rows(iter_tsv(path), spec, str(path))
    fmt = spec.options.get("format", "text")
    if fmt != "text":
        raise ConfigError(f"{path}: plain text files are read as format=text; use JSONL or TSV for {fmt}")
    texts = list(itertools.islice((ln.strip() for ln in iter_text(path) if ln.strip()), spec.limit))
    if not texts:
        raise DataError(f"data file {path} is empty: pass a file with at least one line of text")
    return Records("text", str(path), texts=texts)


def _load_hf(spec: DataSpec) -> Records:
    name = spec.source[3:]
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("hf: data specs need the datasets package: pip install 'layerswap[hub]'") from exc
    lowered = name.lower()
    for key, why in _REFUSED_CORPORA.items():
        if key in lowered:
            raise DataError(f"data spec {spec.raw!r}: {why}; never train on it")
    split = spec.options.get("split", "train")
    if "gsm8k" in lowered and split != "train":
        raise DataError(f"data spec {spec.raw!r}: only the GSM8K train split may be used for training")
    try:
        ds = datasets.load_dataset(name, spec.options.get("config") or None, split=split)
    except Exception as exc:  # noqa: BLE001 - the Hub raises many kinds; say which dataset failed
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} (split {split}): {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    return _records_from_rows(((i + 1, dict(row)) for i, row in enumerate(ds)), spec, f"hf:{name}[{split}]")


def load_records(spec: str | DataSpec, *, data_dir: str | os.PathLike[str] | None = None) -> Records:
    """Read the records a spec names (no tokenizer needed); raise DataError when there are none."""
    spec = spec if isinstance(spec, DataSpec) else parse_spec(spec)
    root = resolve_data_dir(data_dir) if data_dir is not None else resolve_data_dir(None)
    head = spec.source.split(":", 1)[0].lower()
    if head in _REFUSED_CORPORA and not Path(spec.source).exists():
        raise DataError(f"data spec {spec.raw!r}: {_REFUSED_CORPORA[head]}; never train on it (use gsm8k, ntrex, tico or tatoeba)")
    if spec.source.startswith("hf:"):
        records = _load_hf(spec)
    elif head in _SHORTHANDS and not Path(spec.source).exists():
        records = _load_shorthand(spec, root)
    else:
        records = _load_file(Path(spec.source).expanduser(), spec, root)
    if len(records) == 0:
        raise DataError(f"data spec {spec.raw!r} gives no examples: check the file and the limit")
    return records
