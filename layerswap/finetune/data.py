"""Training data specs -> tokenized examples (prompt/completion or packed text).

A *spec* names a source and, after ``?``, options as ``key=value`` pairs separated by ``,`` or ``&``:

    gsm8k                         GSM8K train (math: question -> worked solution ending "#### N")
    ntrex:sw   tico:sw   tatoeba:sw  target-language text, packed into seq_len blocks
    ntrex:sw?format=pairs         English -> Swahili translation pairs (loss on the translation)
    data/train.jsonl?prompt=q,completion=a   local JSONL/TSV with named fields
    notes.txt                     local plain text, one document per line, packed
    hf:openai/gsm8k?config=main,split=train,format=math   a Hugging Face dataset by name

Options: ``format`` (math | qa | pairs | text), field names (``prompt``, ``completion``,
``text``, ``source``, ``target``), ``limit`` (first N records), ``split``/``config`` (hf:),
``direction`` (pairs from corpora: ``en-xx`` or ``xx-en``).

Evaluation sets are refused (FLORES-200, SIB-200, MGSM, GSM8K test): training on them would leak
the test. Prompt/completion examples carry labels -100 on the prompt so the loss is on the
completion only; the model's chat template wraps them when it has one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from layerswap.data import LANGUAGES, iter_jsonl, iter_tsv, language, read_lines, require_fields, resolve_data_dir
from layerswap.errors import ConfigError, DataError, InputPathError

Format = Literal["math", "qa", "pairs", "text"]
FORMATS: tuple[str, ...] = ("math", "qa", "pairs", "text")
IGNORE_INDEX = -100

#: The math prompt matches MGSM's English exemplars, so training and evaluation agree.
MATH_PROMPT = "Question: {question}\nStep-by-Step Answer:"
PAIRS_PROMPT = "Translate from {src_name} to {tgt_name}.\n{src_name}: {source}\n{tgt_name}:"
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_SHORTHANDS = ("gsm8k", "ntrex", "tico", "tatoeba")
_REFUSED = {
    "flores": "FLORES-200 is an evaluation set",
    "flores200": "FLORES-200 is an evaluation set",
    "sib200": "SIB-200 sentences are FLORES sentences (an evaluation set)",
    "sib": "SIB-200 sentences are FLORES sentences (an evaluation set)",
    "mgsm": "MGSM is the evaluation set",
}
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
    return MATH_PROMPT.format(question=question.strip()), " " + strip_calculator(answer).strip()


def _check_not_eval(path: Path, data_dir: Path | None, raw: str) -> None:
    """Refuse evaluation files even when named by path."""
    resolved = path.resolve()
    parts = {p.lower() for p in resolved.parts}
    for key, why in _REFUSED.items():
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
    ids = ids_path.read_text(encoding="utf-8").splitlines()
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
                f"data spec {spec.raw!r}: only GSM8K train may be used for training (GSM8K test holds the MGSM questions)"
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
    texts = [ln.strip() for ln in read_lines(path) if ln.strip()]
    return Records("text", str(path), texts=_limit(texts, spec))


def _load_hf(spec: DataSpec) -> Records:
    name = spec.source[3:]
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("hf: data specs need the datasets package: pip install 'layerswap[hub]'") from exc
    lowered = name.lower()
    for key, why in _REFUSED.items():
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
    if head in _REFUSED and not Path(spec.source).exists():
        raise DataError(f"data spec {spec.raw!r}: {_REFUSED[head]}; never train on it (use gsm8k, ntrex, tico or tatoeba)")
    if spec.source.startswith("hf:"):
        records = _load_hf(spec)
    elif head in _SHORTHANDS and not Path(spec.source).exists():
        records = _load_shorthand(spec, root)
    else:
        records = _load_file(Path(spec.source).expanduser(), spec, root)
    if len(records) == 0:
        raise DataError(f"data spec {spec.raw!r} gives no examples: check the file and the limit")
    return records


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizedData(torch.utils.data.Dataset):
    """Tokenized examples (``input_ids``/``labels`` lists) of one source, with counts for provenance."""

    name: str
    spec: str
    format: str
    examples: list[dict[str, list[int]]]
    truncated: int = 0
    dropped: int = 0
    chat_template: bool = False

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]

    @property
    def num_tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)

    @property
    def num_loss_tokens(self) -> int:
        return sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in self.examples)

    def summary(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "format": self.format,
            "examples": len(self),
            "tokens": self.num_tokens,
            "loss_tokens": self.num_loss_tokens,
            "truncated": self.truncated,
            "dropped_too_long": self.dropped,
            "chat_template": self.chat_template,
        }


def _use_chat_template(tokenizer: Any, choice: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        return has
    if choice in ("yes", "true", "on", "1"):
        if not has:
            raise ConfigError("chat_template=yes but the tokenizer has no chat template: use auto or no")
        return True
    if choice in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"chat_template must be auto, yes or no, not {choice!r}")


def _prompt_completion_ids(tokenizer: Any, prompt: str, completion: str, chat: bool) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with BOS) and of the completion (with the end-of-turn/EOS)."""
    if chat:
        messages = [{"role": "user", "content": prompt.strip()}]
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion.strip()}], tokenize=False)
        if not full.startswith(head):
            raise DataError("the chat template renders the prompt differently inside a conversation: pass chat_template=no")
        p = tokenizer(head, add_special_tokens=False)["input_ids"]
        c = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
        return list(p), list(c)
    p = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        c.append(tokenizer.eos_token_id)
    return p, c


def tokenize_records(
    records: Records,
    tokenizer: Any,
    seq_len: int,
    *,
    name: str = "train",
    spec: str = "",
    chat_template: str = "auto",
) -> TokenizedData:
    """Prompt/completion -> one example each (prompt labels masked); text -> packed ``seq_len`` blocks."""
    if seq_len < 2:
        raise ConfigError(f"seq_len {seq_len} is too short: use at least 2 (e.g. 256)")
    examples: list[dict[str, list[int]]] = []
    truncated = dropped = 0
    chat = False
    if records.format == "text":
        stream: list[int] = []
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for text in records.texts:
            stream.extend(bos + list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos)
        for start in range(0, len(stream), seq_len):
            block = stream[start : start + seq_len]
            if len(block) >= 2:
                examples.append({"input_ids": block, "labels": list(block)})
    else:
        chat = _use_chat_template(tokenizer, chat_template)
        for prompt, completion in records.pairs:
            p, c = _prompt_completion_ids(tokenizer, prompt, completion, chat)
            if len(p) >= seq_len:
                dropped += 1
                continue
            if len(p) + len(c) > seq_len:
                truncated += 1
                c = c[: seq_len - len(p)]
            examples.append({"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c})
    if not examples:
        why = f" ({dropped} prompts longer than seq_len {seq_len})" if dropped else ""
        raise DataError(f"data spec {spec or records.origin!r} gives no training examples{why}: check the data or raise seq_len")
    return TokenizedData(name, spec or records.origin, records.format, examples, truncated, dropped, chat)


def load_dataset(
    spec: str,
    tokenizer: Any,
    seq_len: int,
    *,
    name: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    chat_template: str = "auto",
) -> TokenizedData:
    """Resolve, read and tokenize one spec."""
    parsed = parse_spec(spec)
    records = load_records(parsed, data_dir=data_dir)
    choice = parsed.options.get("chat_template", chat_template)
    return tokenize_records(records, tokenizer, seq_len, name=name, spec=parsed.raw, chat_template=choice)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


@dataclass
class Collator:
    """Right-pad a batch to its longest example; pads get label -100 and attention 0.

    ``group`` (the index of the dataset an example came from) is passed through for
    simultaneous training, which picks the partition to update from it.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in batch)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.tensor(e["labels"], dtype=torch.long)
            mask[i, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "group" in batch[0]:
            groups = {int(e["group"]) for e in batch}
            if len(groups) != 1:
                raise RuntimeError("a simultaneous-training batch mixes data groups")
            out["group"] = torch.tensor(groups.pop())
        return out


class GroupedDataset(torch.utils.data.Dataset):
    """Several tokenized sets behind one index; each item says which set (``group``) it came from."""

    def __init__(self, parts: Sequence[TokenizedData]) -> None:
        self.parts = list(parts)
        self.offsets: list[int] = []
        total = 0
        for part in self.parts:
            self.offsets.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict[str, Any]:
        for g in range(len(self.parts) - 1, -1, -1):
            if i >= self.offsets[g]:
                item = dict(self.parts[g][i - self.offsets[g]])
                item["group"] = g
                return item
        raise IndexError(i)

    def indices_of(self, group: int) -> range:
        return range(self.offsets[group], self.offsets[group] + len(self.parts[group]))


class AlternatingBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches for simultaneous training: every optimizer step draws all its micro-batches from one group.

    ``schedule`` lists the group of each optimizer step in a cycle (``ratio`` math=2, lang=1 ->
    [0, 1, 0]). Each micro-batch is repeated for every data-parallel process (with different
    examples), so under DDP ``accelerate``'s batch sharding hands all processes the same group
    at the same step. Deterministic in ``seed``: a resumed run sees the same batches.
    """

    def __init__(
        self,
        dataset: GroupedDataset,
        schedule: Sequence[int],
        *,
        batch_size: int,
        grad_accum: int,
        steps: int,
        num_processes: int = 1,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.schedule = list(schedule)
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.steps = steps
        self.num_processes = num_processes
        self.seed = seed

    def __len__(self) -> int:
        return self.steps * self.grad_accum * self.num_processes

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        orders: dict[int, list[int]] = {}
        cursor: dict[int, int] = {}

        def take(group: int) -> list[int]:
            idx = self.dataset.indices_of(group)
            out = []
            while len(out) < self.batch_size:
                if cursor.get(group, len(idx)) >= len(idx):
                    orders[group] = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
                    cursor[group] = 0
                out.append(orders[group][cursor[group]])
                cursor[group] += 1
            return out

        for step in range(self.steps):
            group = self.schedule[step % len(self.schedule)]
            for _ in range(self.grad_accum * self.num_processes):
                yield take(group)


def ratio_schedule(names: Sequence[str], ratio: dict[str, int]) -> list[int]:
    """``{"math": 2, "lang": 1}`` -> ``[0, 1, 0]`` (group indices in ``names`` order, interleaved)."""
    counts = [int(ratio.get(n, 1)) for n in names]
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ConfigError(f"ratio {ratio} must give each data set a non-negative count, not all zero")
    left = list(counts)
    schedule: list[int] = []
    # Round-robin over the remaining counts: 2:1 -> [0, 1, 0], so no group waits long for its turn.
    while any(left):
        for g, n in enumerate(left):
            if n:
                schedule.append(g)
                left[g] -= 1
    return schedule
