"""The resumable result store: per finished candidate a JSON of tidy rows and a CSV of per-example scores.

A candidate's per-example scores (``candidates/NAME.scores.csv``: task, lang, id, score, num,
den) and then its rows (``candidates/NAME.json``, which names the scores file's SHA-1) are written
atomically (``write_text_atomic``) as soon as they exist, so a killed sweep rerun with the same
command skips what is done and ends with identical results. A row keeps the value and interval
its task reported (stored once, never recomputed); every paired comparison is computed from the
scores as read back from the CSV text, so a fresh and a resumed sweep compare the same numbers. A
stored result is reused only when the candidate's merge and the resume key are unchanged
(:mod:`~layerswap.sweep.resume`: the settings that change results and the contents of the models
and data the sweep reads, so a retrained expert is evaluated again) and its scores file is the one
its JSON names.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from layerswap.io import write_text_atomic
from layerswap.io.stored import check_stored_result, read_stored_text
from layerswap.sweep.config import Candidate
from layerswap.sweep.resume import ResumeKey, as_key, reusable_record

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
#: A headline metric's uncertainty and example count, as its task reports them.
ESTIMATE_COLUMNS = ("stderr", "ci_low", "ci_high", "n")

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
        fix = f"delete {self.dir / candidate.name}.json and .scores.csv to evaluate it again"
        record, why = reusable_record(path, root=self.dir, fix=fix, fingerprint=candidate.fingerprint(), key=self.key)
        if record is None:
            return None, why
        digest = record.get("scores_sha1")
        text = self._scores_text(candidate)
        if digest is not None and _sha1(text) != digest:
            return None, ["scores"]  # scores missing or not the ones these rows were computed from: evaluate again
        scores = read_scores(text) if digest is not None and text else None
        check_stored_result(record, scores, path, what=f"candidate {candidate.name}", fix=fix, headline=_headline_metric)
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
        return read_stored_text(path, root=self.dir, fix=f"delete {path} to evaluate it again") if os.path.lexists(path) else None

    def load(self, candidate: Candidate) -> list[dict[str, Any]] | None:
        """The stored rows of ``candidate`` (its task's value and interval as first reported), or None
        when absent or made with another resume key."""
        record = self._record(candidate)
        return None if record is None else record["rows"]

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


def _headline_metric(task: str) -> str:
    """The metric a task's per-example ``score`` column holds (its registry entry's headline metric)."""
    from layerswap.evaluate.tasks import get_task

    return get_task(task).metric


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


def rows_for(
    candidate: Candidate,
    summary: pd.DataFrame,
    *,
    eval_seconds: float,
    merge_seconds: float,
    scores: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows of one candidate from a tidy summary (``task, language, metric, value`` and, for each
    task's headline metric, the ``stderr, ci_low, ci_high, n`` its runner reported).

    A headline row whose runner reported no uncertainty gets it from the task's own aggregation of
    ``scores`` (:meth:`~layerswap.evaluate.tasks.spec.TaskSpec.aggregate`); other metrics leave it empty.
    """
    from layerswap.evaluate.tasks import get_task

    rows = []
    for rec in summary.to_dict("records"):
        est = {k: float(rec[k]) if rec.get(k) is not None else float("nan") for k in ESTIMATE_COLUMNS}
        spec = get_task(rec["task"])
        if rec["metric"] == spec.metric and scores is not None and all(pd.isna(v) for v in est.values()):
            mine = scores[(scores["task"] == rec["task"]) & (scores["lang"] == rec["language"])]
            if len(mine):
                found = spec.aggregate(mine, lang=rec["language"])
                est = {k: found[k] for k in ESTIMATE_COLUMNS}
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
