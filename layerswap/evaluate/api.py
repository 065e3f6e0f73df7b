"""One function per task, each returning records and a summary DataFrame, and :func:`evaluate`.

Every function takes a model as a folder, a PEFT adapter folder, a short name, a
:class:`~layerswap.evaluate.runner.LoadedModel`, or an in-memory ``(model, tokenizer)`` pair (the
sweep merges weights in memory and calls these per candidate without touching disk).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layerswap.data import iter_jsonl, iter_tsv, language, read_lines, require_fields, resolve_data_dir
from layerswap.errors import ConfigError, DataError, InputPathError
from layerswap.evaluate import loglik, mgsm
from layerswap.evaluate.answers import flexible_extractor, gsm8k_gold, strict_extractor
from layerswap.evaluate.runner import LoadedModel, as_loaded, generate, load_model
from layerswap.evaluate.tasks import Example, GenerationTask

TASKS = ("mgsm", "gsm8k", "flores", "sib200", "proxy", "custom")
SIB_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")
SIB_TEMPLATE = "{text}\nTopic:"
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


@dataclass
class EvalResult:
    """Per-example records (JSON-able dicts) and one summary row per task and language."""

    records: list[dict[str, Any]] = field(default_factory=list)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)

    def extend(self, other: EvalResult) -> EvalResult:
        self.records.extend(other.records)
        self.summary = pd.concat([self.summary, other.summary], ignore_index=True) if len(self.summary) else other.summary
        return self


ModelLike = Any


def _lm(model: ModelLike, tokenizer: Any = None, **load_kw: Any) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is not None:
        return as_loaded(model, tokenizer)
    if isinstance(model, tuple):
        return as_loaded(*model)
    if hasattr(model, "forward") and not isinstance(model, (str, Path)):
        raise ConfigError("an in-memory model needs its tokenizer: pass tokenizer=... or a (model, tokenizer) pair")
    return load_model(model, **load_kw)


def _limit(items: list, limit: int | None) -> list:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} must be at least 1")
    return items[:limit] if limit is not None else items


def run_generation_task(
    lm: LoadedModel, task: GenerationTask, examples: Sequence[Example], *, batch_size: int = 8, max_new_tokens: int = 256
) -> EvalResult:
    """Generate, extract and score one task (one language): the shared MGSM/GSM8K/custom path."""
    prompts = [task.prompt(ex.question) for ex in examples]
    t0 = time.perf_counter()
    outputs = generate(lm, prompts, stop=task.stop, max_new_tokens=max_new_tokens, batch_size=batch_size, desc=task.name)
    seconds = time.perf_counter() - t0
    records = []
    for ex, prompt, output in zip(examples, prompts, outputs, strict=True):
        scored = task.score(output, ex.gold)
        records.append(
            {"task": task.family, "name": task.name, "lang": task.lang, "id": ex.id, "prompt": prompt, "output": output, "gold": ex.gold, **scored}
        )
    n = len(records)
    row: dict[str, Any] = {
        "task": task.family,
        "format": task.fmt,
        "lang": task.lang,
        "shots": task.shots,
        "n": n,
        "exact_match": sum(r["correct"] for r in records) / n,
    }
    for ex in task.extractors:
        row[f"em_{ex.name}"] = sum(r[f"em_{ex.name}"] for r in records) / n
    row["empty"] = sum(1 for r in records if not r["output"].strip())
    row["seconds"] = round(seconds, 2)
    return EvalResult(records, pd.DataFrame([row]))


def evaluate_mgsm(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    fmt: str = "native_cot",
    shots: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """MGSM exact match per language in lm-eval's ``direct`` or ``native_cot`` format."""
    mgsm.check_format(fmt)
    mgsm.check_shots(shots)
    for lang in langs:
        mgsm.check_language(lang)
    lm = _lm(model, tokenizer)
    result = EvalResult()
    for lang in langs:
        exemplars = mgsm.load_exemplars(lang, data_dir=data_dir) if shots else None
        task = mgsm.make_task(lang, fmt, shots=shots, exemplars=exemplars)
        examples = _limit(mgsm.load_examples(lang, data_dir=data_dir, limit=limit), limit)
        result.extend(run_generation_task(lm, task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens))
    return result


def gsm8k_task(shots: int, train: list[tuple[str, str]]) -> GenerationTask:
    """lm-eval's ``gsm8k`` prompt ("Question: ...\\nAnswer:"), first ``shots`` train examples."""
    fewshot = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in train[:shots])
    return GenerationTask(
        name="gsm8k",
        family="gsm8k",
        lang="en",
        template="Question: {question}\nAnswer:",
        stop=GSM8K_STOP,
        extractors=(strict_extractor(r"#### (\-?[0-9\.\,]+)"), flexible_extractor()),
        answer_order=("strict-match", "flexible-extract"),
        fewshot=fewshot,
        shots=shots,
        fmt="cot",
    )


def _gsm8k_rows(split: str, data_dir: str | Path | None) -> list[tuple[str, str]]:
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / "gsm8k" / f"{split}.jsonl"
        rows = []
        for lineno, rec in iter_jsonl(path):
            require_fields(rec, ["question", "answer"], path=path, lineno=lineno)
            rows.append((rec["question"], rec["answer"]))
        return rows
    try:
        import datasets

        return [(d["question"], d["answer"]) for d in datasets.load_dataset("openai/gsm8k", "main", split=split)]
    except Exception as exc:
        raise InputPathError(f"no local data folder and openai/gsm8k could not be loaded ({exc}): pass --data-dir") from exc


def evaluate_gsm8k(
    model: ModelLike,
    *,
    shots: int = 5,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """GSM8K test (English) exact match, to watch the math expert's source skill."""
    if shots < 0:
        raise ConfigError("--shots must be 0 or more")
    lm = _lm(model, tokenizer)
    train = _gsm8k_rows("train", data_dir) if shots else []
    test = _limit(_gsm8k_rows("test", data_dir), limit)
    examples = [Example(f"gsm8k-{i}", q, gsm8k_gold(a)) for i, (q, a) in enumerate(test)]
    return run_generation_task(lm, gsm8k_task(shots, train), examples, batch_size=batch_size, max_new_tokens=max_new_tokens)


def load_custom(path: str | Path, *, question_field: str = "question", answer_field: str = "answer", limit: int | None = None) -> list[Example]:
    """Questions from a JSONL file or a TSV/CSV with a header; a missing field names the line."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"data file {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        rows = iter_jsonl(path)
    elif path.suffix in (".tsv", ".txt"):
        rows = iter_tsv(path)
    else:
        raise DataError(f"{path}: use a .jsonl file or a .tsv file with a header row")
    examples = []
    for lineno, rec in rows:
        require_fields(rec, [question_field, answer_field], path=path, lineno=lineno)
        examples.append(Example(f"{path.stem}-{lineno}", str(rec[question_field]), gsm8k_gold(str(rec[answer_field])), {"line": lineno}))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def evaluate_custom(
    model: ModelLike,
    data: str | Path,
    *,
    lang: str,
    question_field: str = "question",
    answer_field: str = "answer",
    fmt: str = "native_cot",
    shots: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """User questions evaluated like MGSM in ``lang`` (its prompt words, stop strings, patterns)."""
    mgsm.check_language(lang)
    examples = load_custom(data, question_field=question_field, answer_field=answer_field, limit=limit)
    exemplars = mgsm.load_exemplars(lang, data_dir=data_dir) if shots else None
    task = mgsm.make_task(lang, fmt, shots=shots, exemplars=exemplars)
    task = GenerationTask(**{**task.__dict__, "name": f"custom_{fmt}_{lang}", "family": "custom"})
    return run_generation_task(_lm(model, tokenizer), task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)


def _flores_lines(code: str, root: Path | None) -> list[str]:
    if root is not None:
        return [loglik.normalise_quotes(x) for x in read_lines(root / "flores200" / "devtest" / f"{code}.devtest") if x.strip()]
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
    codes = [language(lang) for lang in langs]
    root = resolve_data_dir(data_dir)
    lm = _lm(model, tokenizer)
    result = EvalResult()
    for lg in codes:
        if lg.flores is None:
            raise DataError(f"FLORES-200 has no {lg.code}")
        lines = _limit(_flores_lines(lg.flores, root), limit)
        t0 = time.perf_counter()
        scored = loglik.score_tokens(lm, [loglik.text_tokens(lm, x) for x in lines], batch_size=batch_size, desc=f"flores_{lg.code}")
        seconds = time.perf_counter() - t0
        n_bytes = [len(x.encode("utf-8")) for x in lines]
        for i, (line, s, nb) in enumerate(zip(lines, scored, n_bytes, strict=True)):
            result.records.append({"task": "flores", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": line, "logprob": s.logprob, "tokens": s.n_tokens, "bytes": nb})
        total = sum(s.logprob for s in scored)
        row = {
            "task": "flores",
            "lang": lg.code,
            "n": len(lines),
            "bits_per_byte": loglik.bits_per_byte(total, sum(n_bytes)),
            "tokens_per_byte": sum(s.n_tokens for s in scored) / sum(n_bytes),
            "seconds": round(seconds, 2),
        }
        result.extend(EvalResult([], pd.DataFrame([row])))
    return result


def _sib_rows(code: str, root: Path | None, split: str) -> list[tuple[str, str]]:
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
    codes = [language(lang) for lang in langs]
    root = resolve_data_dir(data_dir)
    lm = _lm(model, tokenizer)
    result = EvalResult()
    for lg in codes:
        rows = _limit(_sib_rows(lg.flores, root, split), limit)
        pairs = [(SIB_TEMPLATE.format(text=text), " " + label) for text, _ in rows for label in SIB_LABELS]
        t0 = time.perf_counter()
        scored = loglik.loglikelihood(lm, pairs, batch_size=batch_size, desc=f"sib200_{lg.code}")
        seconds = time.perf_counter() - t0
        correct = 0
        for i, (text, gold) in enumerate(rows):
            scores = [s.logprob for s in scored[i * len(SIB_LABELS) : (i + 1) * len(SIB_LABELS)]]
            pred = SIB_LABELS[max(range(len(scores)), key=scores.__getitem__)]
            correct += pred == gold
            result.records.append({"task": "sib200", "lang": lg.code, "id": f"{lg.flores}-{i}", "text": text, "gold": gold, "answer": pred, "correct": pred == gold})
        row = {"task": "sib200", "lang": lg.code, "n": len(rows), "accuracy": correct / len(rows), "seconds": round(seconds, 2)}
        result.extend(EvalResult([], pd.DataFrame([row])))
    return result


def proxy_pair(task: GenerationTask, lang: str, question: str, gold: str) -> tuple[str, str]:
    """Context = the fixed CoT prompt; continuation = the language's answer sentence with the gold
    number (``" Jibu ni 18."``)."""
    return task.prompt(question), " " + mgsm.MGSM_LANGUAGES[lang].phrase.format(n=gold)


def evaluate_proxy(
    model: ModelLike,
    langs: Sequence[str] = ("sw", "bn", "te"),
    *,
    shots: int = 2,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    tokenizer: Any = None,
) -> EvalResult:
    """The sweep's fast proxy: ``log p(gold answer sentence | native CoT prompt)``, one forward each.

    A proxy, not accuracy: it rewards a model that would state the right number straight after
    the cue, skipping the reasoning. Use it to rank sweep candidates, then confirm with MGSM.
    """
    mgsm.check_shots(shots)
    for lang in langs:
        mgsm.check_language(lang)
    lm = _lm(model, tokenizer)
    result = EvalResult()
    for lang in langs:
        exemplars = mgsm.load_exemplars(lang, data_dir=data_dir) if shots else None
        task = mgsm.make_task(lang, "native_cot", shots=shots, exemplars=exemplars)
        examples = _limit(mgsm.load_examples(lang, data_dir=data_dir, limit=limit), limit)
        pairs = [proxy_pair(task, lang, ex.question, ex.gold) for ex in examples]
        t0 = time.perf_counter()
        scored = loglik.loglikelihood(lm, pairs, batch_size=batch_size, desc=f"proxy_{lang}")
        seconds = time.perf_counter() - t0
        for ex, (_, cont), s in zip(examples, pairs, scored, strict=True):
            result.records.append(
                {"task": "proxy", "lang": lang, "id": ex.id, "continuation": cont, "gold": ex.gold, "logprob": s.logprob, "tokens": s.n_tokens, "greedy": s.greedy}
            )
        row = {"task": "proxy", "format": "native_cot", "lang": lang, "shots": shots, **loglik.summarise_logprobs(scored), "seconds": round(seconds, 2)}
        result.extend(EvalResult([], pd.DataFrame([row])))
    return result


def evaluate(
    model: ModelLike,
    tasks: str | Sequence[str] = ("mgsm",),
    langs: str | Sequence[str] = ("sw", "bn", "te"),
    *,
    tokenizer: Any = None,
    fmt: str = "native_cot",
    shots: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    data_dir: str | Path | None = None,
    data: str | Path | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    base: str | None = None,
) -> EvalResult:
    """Run ``tasks`` on ``langs`` and (with ``out``) write ``examples.jsonl``, ``summary.csv`` and
    a provenance JSON atomically. ``shots=None`` takes each task's default (mgsm 0 as lm-eval,
    gsm8k 5, proxy 2)."""
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    langs = [x.strip() for x in (langs.split(",") if isinstance(langs, str) else langs) if x.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown task {unknown[0] if unknown else '(none)'!r}: valid tasks are {', '.join(TASKS)}")
    if "custom" in tasks and data is None:
        raise ConfigError("--task custom needs --data FILE (with --question-field, --answer-field and --lang)")
    if any(t in tasks for t in ("mgsm", "proxy", "custom")):
        for lang in langs:
            mgsm.check_language(lang)
    else:
        for lang in langs:
            language(lang)
    if shots is not None:
        if "gsm8k" not in tasks or any(t in tasks for t in ("mgsm", "proxy", "custom")):
            mgsm.check_shots(shots)
        elif shots < 0:
            raise ConfigError("--shots must be 0 or more")
    if out is not None:
        from layerswap.checkpoint import prepare_output_dir

        prepare_output_dir(out, overwrite)  # fail before the minutes of evaluation, not after
    lm = model if isinstance(model, LoadedModel) else _lm(model, tokenizer, device=device, dtype=dtype, base=base)
    gen = {"limit": limit, "batch_size": batch_size, "data_dir": data_dir}
    runs: dict[str, Callable[[], EvalResult]] = {
        "mgsm": lambda: evaluate_mgsm(lm, langs, fmt=fmt, shots=0 if shots is None else shots, max_new_tokens=max_new_tokens, **gen),
        "gsm8k": lambda: evaluate_gsm8k(lm, shots=5 if shots is None else shots, max_new_tokens=max_new_tokens, **gen),
        "flores": lambda: evaluate_flores(lm, langs, **gen),
        "sib200": lambda: evaluate_sib200(lm, langs, **gen),
        "proxy": lambda: evaluate_proxy(lm, langs, shots=2 if shots is None else shots, **gen),
        "custom": lambda: evaluate_custom(
            lm, data, lang=langs[0], question_field=question_field, answer_field=answer_field, fmt=fmt,
            shots=0 if shots is None else shots, max_new_tokens=max_new_tokens, **gen,
        ),
    }
    result = EvalResult()
    for task in tasks:
        result.extend(runs[task]())
    result.summary = _proxy_next_to_em(result.summary)
    if out is not None:
        settings = {"tasks": tasks, "langs": langs, "format": fmt, "shots": shots, "limit": limit, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
        save_result(result, out, overwrite=overwrite, provenance={"kind": "evaluation", "model": lm.info or lm.name, **settings})
    return result


def _proxy_next_to_em(summary: pd.DataFrame) -> pd.DataFrame:
    """Copy the proxy's gold log-likelihood onto the MGSM rows of the same language; counts as ints."""
    for col in ("shots", "n", "empty"):
        if col in summary:
            summary[col] = summary[col].astype("Int64")
    if summary.empty or "gold_logprob" not in summary or "exact_match" not in summary:
        return summary
    proxy = summary[summary["task"] == "proxy"].set_index("lang")["gold_logprob"]
    is_mgsm = summary["task"] == "mgsm"
    summary.loc[is_mgsm, "gold_logprob"] = summary.loc[is_mgsm, "lang"].map(proxy)
    return summary


def save_result(result: EvalResult, out: str | Path, *, overwrite: bool = False, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``examples.jsonl``, ``summary.csv`` and ``layerswap.json`` into ``out`` atomically."""
    from layerswap.checkpoint import AtomicDir, write_provenance

    with AtomicDir(out, overwrite=overwrite) as tmp:
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as fh:
            for rec in result.records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        result.summary.to_csv(tmp / "summary.csv", index=False)
        write_provenance(tmp, provenance or {"kind": "evaluation"})
    return Path(out)


def format_summary(summary: pd.DataFrame) -> str:
    """The printed table: one row per task and language, metrics rounded."""
    if summary.empty:
        return "(no results)"
    shown = summary.drop(columns=[c for c in ("format", "shots") if c in summary and summary[c].isna().all()])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
