"""The resumable result store: one JSON per finished candidate, and the tidy rows it holds.

A candidate's rows are written atomically (``write_text_atomic``) as soon as they exist, so a
killed sweep rerun with the same command skips what is done and ends with identical results. A
stored result is reused only when the candidate's merge and the evaluation settings are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from layerswap.io import write_text_atomic
from layerswap.sweep.config import Candidate, SweepConfig

#: The columns of ``results.csv``: one row per candidate x task x language x metric.
RESULT_COLUMNS = [
    "candidate",
    "method",
    "parameters",
    "task",
    "language",
    "metric",
    "value",
    "time",
    "merge_time",
    "bottom",
    "top",
    "transition",
    "analysis_score",
    "source",
]

_SETTINGS_KEYS = ("base", "math", "lang", "languages", "tasks", "limit", "shots", "format", "max_new_tokens", "non_layer", "dtype", "data_dir")


def settings_key(config: SweepConfig) -> str:
    """What makes two evaluations comparable: tasks, languages, limits, formats and models."""
    data = {k: getattr(config, k) for k in _SETTINGS_KEYS}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ResultStore:
    """One JSON per finished candidate under ``DIR/candidates``, written atomically."""

    def __init__(self, out: Path, settings_key: str) -> None:
        self.dir = out / "candidates"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings_key = settings_key

    def path(self, candidate: Candidate) -> Path:
        return self.dir / f"{candidate.name}.json"

    def load(self, candidate: Candidate) -> list[dict[str, Any]] | None:
        """The stored rows of ``candidate``, or None when absent or made with other settings."""
        path = self.path(candidate)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a torn file cannot exist (atomic rename), but never trust it
        if record.get("fingerprint") != candidate.fingerprint() or record.get("settings") != self.settings_key:
            return None
        return record["rows"]

    def save(self, candidate: Candidate, rows: list[dict[str, Any]]) -> None:
        record = {"fingerprint": candidate.fingerprint(), "settings": self.settings_key, "rows": rows}
        write_text_atomic(self.path(candidate), json.dumps(record, indent=1, default=float))


def rows_for(candidate: Candidate, summary: pd.DataFrame, *, eval_seconds: float, merge_seconds: float) -> list[dict[str, Any]]:
    """Tidy rows of one candidate from an evaluation summary (task, language, metric, value)."""
    rows = []
    for rec in summary.to_dict("records"):
        rows.append(
            {
                "candidate": candidate.name,
                "method": candidate.method,
                "parameters": json.dumps(candidate.params, sort_keys=True),
                "task": rec["task"],
                "language": rec["language"],
                "metric": rec["metric"],
                "value": float(rec["value"]),
                "time": round(eval_seconds, 3),
                "merge_time": round(merge_seconds, 4),
                "bottom": candidate.bottom,
                "top": candidate.top,
                "transition": candidate.transition,
                "analysis_score": candidate.analysis_score,
                "source": candidate.source,
            }
        )
    return rows
