"""The resumable result store: per finished candidate a JSON of tidy rows and a CSV of per-example scores.

A candidate's per-example scores (``candidates/NAME.scores.csv``: task, lang, id, score, num,
den) and then its rows (``candidates/NAME.json``, which names the scores file's SHA-1) are written
atomically (``write_text_atomic``) as soon as they exist, so a killed sweep rerun with the same
command skips what is done and ends with identical results. Every statistic (a row's standard
error and interval, every paired comparison) is computed from the scores as read back from that
CSV text, so a fresh and a resumed sweep compute them from the same numbers. A stored result is
reused only when the candidate's merge and the evaluation settings are unchanged and its scores
file is the one its JSON names.
The key (:mod:`~layerswap.sweep.resume`) covers the settings that change results and the contents
of the models and data the sweep reads: a retrained expert is evaluated again.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from layerswap.io import write_text_atomic
from layerswap.sweep.config import Candidate
from layerswap.sweep.resume import ResumeKey, as_key, mismatch

#: The columns of ``results.csv``: one row per candidate x task x language x metric.
RESULT_COLUMNS = [
    "candidate",
    "method",
    "parameters",
    "task",
    "language",
    "metric",
    "value",
    "stderr",
    "ci_low",
    "ci_high",
    "n",
    "time",
    "merge_time",
    "bottom",
    "top",
    "transition",
    "analysis_score",
    "source",
]

#: The columns of a candidate's per-example scores: ``num``/``den`` only for ratio metrics
#: (bits and bytes of a FLORES sentence), empty otherwise.
SCORE_COLUMNS = ["task", "lang", "id", "score", "num", "den"]

class ResultStore:
    """Per finished candidate under ``DIR/candidates``: ``NAME.scores.csv`` then ``NAME.json``, both atomic.

    ``key``: the sweep's :class:`~layerswap.sweep.resume.ResumeKey` (settings and inputs' contents);
    a record made with another key, or for another merge, is not reused (:meth:`status` says why)."""

    def __init__(self, out: Path, key: ResumeKey | str) -> None:
        self.dir = out / "candidates"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = as_key(key)

    def path(self, candidate: Candidate) -> Path:
        return self.dir / f"{candidate.name}.json"

    def scores_path(self, candidate: Candidate) -> Path:
        return self.dir / f"{candidate.name}.scores.csv"

    def _read(self, candidate: Candidate) -> tuple[dict[str, Any] | None, list[str]]:
        """The one load path: the stored record of ``candidate`` when it may be reused, else None and
        why not (empty: nothing stored; ``merge``, ``settings``, ``math``...: what changed)."""
        path = self.path(candidate)
        if not path.exists():
            return None, []
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None, []  # a torn file cannot exist (atomic rename), but never trust it
        why = mismatch(record, candidate.fingerprint(), self.key)
        if why:
            return None, why
        digest = record.get("scores_sha1")
        if digest is not None and _sha1(self._scores_text(candidate)) != digest:
            return None, ["scores"]  # scores missing or not the ones these rows were computed from: evaluate again
        return record, []

    def _record(self, candidate: Candidate) -> dict[str, Any] | None:
        return self._read(candidate)[0]

    def status(self, candidates: list[Candidate]) -> tuple[int, dict[str, list[str]]]:
        """How many of ``candidates`` are stored for reuse, and per stale record what changed."""
        stored, stale = 0, {}
        for cand in candidates:
            record, why = self._read(cand)
            stored += record is not None
            if why:
                stale[cand.name] = why
        return stored, stale

    def _scores_text(self, candidate: Candidate) -> str | None:
        path = self.scores_path(candidate)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def load(self, candidate: Candidate) -> list[dict[str, Any]] | None:
        """The stored rows of ``candidate``, or None when absent or made with other settings.

        Their uncertainty columns are recomputed from the stored per-example scores, so a sweep resumed
        with a newer layerswap reports every candidate's interval by the same definition."""
        record = self._record(candidate)
        if record is None:
            return None
        scores = self.load_scores(candidate)
        if scores is None:
            return record["rows"]
        return [
            {**row, **{k: v for k, v in metric_estimate(scores, row["task"], row["language"]).items() if k != "n"}}
            if not pd.isna(row.get("n"))
            else row
            for row in record["rows"]
        ]

    def load_scores(self, candidate: Candidate) -> pd.DataFrame | None:
        """The stored per-example scores of ``candidate`` (None when it has none or is not done)."""
        record = self._record(candidate)
        if record is None or record.get("scores_sha1") is None:
            return None
        return read_scores(self._scores_text(candidate) or "")

    def save_scores(self, candidate: Candidate, scores: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        """Write the scores CSV (before the rows that mark the candidate done); returns them as read back."""
        text = scores_csv(scores)
        write_text_atomic(self.scores_path(candidate), text)
        return read_scores(text), _sha1(text)

    def save(self, candidate: Candidate, rows: list[dict[str, Any]], scores_sha1: str | None = None) -> None:
        record = {"fingerprint": candidate.fingerprint(), **self.key.record(), "scores_sha1": scores_sha1, "rows": rows}
        write_text_atomic(self.path(candidate), json.dumps(record, indent=1, default=float))


def _sha1(text: str | None) -> str | None:
    return None if text is None else hashlib.sha1(text.encode("utf-8")).hexdigest()


def scores_csv(scores: pd.DataFrame) -> str:
    """Per-example scores as CSV text: the :data:`SCORE_COLUMNS`, floats written to round-trip exactly."""
    frame = pd.DataFrame({c: scores[c] if c in scores else None for c in SCORE_COLUMNS})
    for col in ("task", "lang", "id"):
        frame[col] = frame[col].astype(str)
    for col in ("score", "num", "den"):
        frame[col] = pd.to_numeric(frame[col]).astype("float64")
    return frame.to_csv(index=False)


def read_scores(text: str) -> pd.DataFrame:
    """Scores CSV text back as a frame: ids and languages as strings, scores as float64 exactly."""
    if not text.strip():
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("score", "num", "den") else str) for c in SCORE_COLUMNS})
    return pd.read_csv(
        io.StringIO(text),
        dtype={"task": str, "lang": str, "id": str, "score": "float64", "num": "float64", "den": "float64"},
        keep_default_na=False,
        na_values={"score": [""], "num": [""], "den": [""]},
        float_precision="round_trip",
    )


def metric_estimate(scores: pd.DataFrame | None, task: str, language: str) -> dict[str, float]:
    """Standard error, 95% interval and n of a task's headline metric in one language, from its scores.

    A mean (``score``): the standard error of the mean and the normal interval (Wilson's for 0/1 scores); a ratio (``num``
    and ``den`` present, bits per byte): a percentile bootstrap over examples (2000 resamples, seed 0).
    NaN or infinite scores (a candidate that overflows) give NaN standard error and interval, the
    examples' count as ``n`` and a one-line warning, so one such candidate cannot stop a sweep.
    """
    from layerswap.evaluate.uncertainty import mean_columns, ratio_columns

    empty = {"stderr": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": float("nan")}
    if scores is None or scores.empty:
        return empty
    sub = scores[(scores["task"] == task) & (scores["lang"] == language)]
    if sub.empty:
        return empty
    if sub["num"].notna().all() and sub["den"].notna().all():
        columns = ratio_columns(sub["num"].tolist(), sub["den"].tolist(), task=task, lang=language)
    else:
        columns = mean_columns(sub["score"].tolist(), task=task, lang=language)
    return {**columns, "n": len(sub)}


def rows_for(
    candidate: Candidate,
    summary: pd.DataFrame,
    *,
    eval_seconds: float,
    merge_seconds: float,
    scores: pd.DataFrame | None = None,
    headline: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows of one candidate from an evaluation summary (task, language, metric, value).

    The headline metric of each task (``headline``: task -> metric) gets its standard error, 95%
    interval and n from ``scores``; other metrics leave them empty.
    """
    rows = []
    for rec in summary.to_dict("records"):
        is_headline = headline is not None and headline.get(rec["task"]) == rec["metric"]
        est = metric_estimate(scores if is_headline else None, rec["task"], rec["language"])
        rows.append(
            {
                "candidate": candidate.name,
                "method": candidate.method,
                "parameters": json.dumps(candidate.params, sort_keys=True),
                "task": rec["task"],
                "language": rec["language"],
                "metric": rec["metric"],
                "value": float(rec["value"]),
                **est,
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
