"""What every task's runner shares: the :class:`EvalResult` it returns, the model it accepts, the
``--limit`` rule, and how a run's result is written and printed.

Imported only when something runs (it pulls in pandas and, through the runner, torch): task modules
import it inside their runners so that the registry stays light for the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from layerswap.errors import ConfigError
from layerswap.evaluate.runner import LoadedModel, as_loaded, load_model

#: A model folder, PEFT adapter folder, short name, LoadedModel, or (model, tokenizer) pair.
ModelLike = Any

#: Summary columns that count things: shown as integers even where a task leaves them empty.
COUNT_COLUMNS = ("shots", "n", "empty")


@dataclass
class EvalResult:
    """Per-example records (JSON-able dicts) and one summary row per task and language."""

    records: list[dict[str, Any]] = field(default_factory=list)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def of(cls, records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> EvalResult:
        """Records and summary rows as a result (so task modules need not import pandas)."""
        return cls(records, pd.DataFrame(rows))

    def extend(self, other: EvalResult) -> EvalResult:
        self.records.extend(other.records)
        self.summary = pd.concat([self.summary, other.summary], ignore_index=True) if len(self.summary) else other.summary
        return self


def as_lm(model: ModelLike, tokenizer: Any = None, **load_kw: Any) -> LoadedModel:
    """Whatever the caller passed, as a :class:`LoadedModel` (loading a folder or name once)."""
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is not None:
        return as_loaded(model, tokenizer)
    if isinstance(model, tuple):
        return as_loaded(*model)
    if hasattr(model, "forward") and not isinstance(model, (str, Path)):
        raise ConfigError("an in-memory model needs its tokenizer: pass tokenizer=... or a (model, tokenizer) pair")
    return load_model(model, **load_kw)


def take(items: list, limit: int | None) -> list:
    """The first ``limit`` items (all with ``None``); ``--limit`` below 1 is a mistake, not zero."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} must be at least 1")
    return items[:limit] if limit is not None else items


def counts_as_ints(summary: pd.DataFrame) -> pd.DataFrame:
    """Count columns as nullable integers (a row of a task without shots leaves ``shots`` empty)."""
    for col in COUNT_COLUMNS:
        if col in summary:
            summary[col] = summary[col].astype("Int64")
    return summary


def save_result(
    result: EvalResult,
    out: str | Path,
    *,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    inputs: Any = (),
) -> Path:
    """Write ``examples.jsonl``, ``summary.csv`` and ``layerswap.json`` into ``out`` atomically.

    ``out`` must not be, contain or lie inside an input: ``inputs`` (model, adapter, data files) and the
    model named in ``provenance`` (see :mod:`layerswap.io.outputs`)."""
    from layerswap.io import AtomicDir, write_provenance

    model = (provenance or {}).get("model")
    inputs = [inputs, [model.get("source"), model.get("base")] if isinstance(model, dict) else model]
    with AtomicDir(out, overwrite=overwrite, inputs=inputs) as tmp:
        with open(tmp / "examples.jsonl", "w", encoding="utf-8") as fh:
            for rec in result.records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        result.summary.to_csv(tmp / "summary.csv", index=False)
        write_provenance(tmp, provenance or {"kind": "evaluation"})
    return Path(out)


_INTERVAL = ["stderr", "ci_low", "ci_high"]
_ALWAYS_SHOWN = ("task", "lang", "n", *_INTERVAL)
_NOT_METRICS = ("task", "format", "lang", "shots", "n", "empty", "seconds", *_INTERVAL)


def format_summary(summary: pd.DataFrame) -> str:
    """The printed table: one row per task and language, metrics rounded.

    Several tasks print as one block each, without the columns that are empty for that task, so
    that ``stderr``, ``ci_low`` and ``ci_high`` stand right after the metric they belong to (the
    task's headline metric); ``summary.csv`` keeps the one wide table.
    """
    if summary.empty:
        return "(no results)"
    if "task" in summary and summary["task"].nunique() > 1:
        blocks = []
        for task in summary["task"].unique():
            rows = summary[summary["task"] == task]
            rows = rows.drop(columns=[c for c in rows if c not in _ALWAYS_SHOWN and rows[c].isna().all()])
            # The task's own columns come after the wide table's earlier tasks' ones: put the
            # interval back after its metric, the first column a task reports after ``n``.
            metric = next((c for c in rows if c not in _NOT_METRICS), None)
            if metric is not None and "stderr" in rows:
                rest = [c for c in rows if c not in _INTERVAL and c != metric]
                at = rest.index("n") + 1 if "n" in rest else len(rest)
                rows = rows[rest[:at] + [metric, *_INTERVAL] + rest[at:]]
            blocks.append(format_summary(rows))
        return "\n\n".join(blocks)
    shown = summary.drop(columns=[c for c in ("format", "shots") if c in summary and summary[c].isna().all()])
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
