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


def save_result(result: EvalResult, out: str | Path, *, overwrite: bool = False, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``examples.jsonl``, ``summary.csv`` and ``layerswap.json`` into ``out`` atomically."""
    from layerswap.io import AtomicDir, write_provenance

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
