"""Stored state is data to validate, never to trust: what a resume reads back from its own folder.

A resumed sweep or fine-tune reads JSON and CSV files it wrote earlier (``candidates/NAME.json``,
``run_config.json``, ``trainer_state.json``, a work folder's marker). Any of them may have been cut,
retyped, edited, replaced by a link, a folder or a FIFO since. Each is read here: only a regular file
of the folder itself (opened with ``O_NOFOLLOW | O_NONBLOCK``, so neither a link nor a FIFO is
followed or waited on), of bounded size, parsed and checked against its schema; stored results are
also checked against the per-example scores they summarise (:func:`check_rows_match_scores`).
Anything else is one line naming the file and what to do.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerswap.errors import CheckpointError

#: The largest stored file read back (a sweep's per-example scores of 10^6 examples fit many times).
MAX_STORED_BYTES = 1 << 30
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symbolic link"))


def _damaged(path: Path, why: str, fix: str) -> CheckpointError:
    return CheckpointError(f"stored state {path} {why}: {fix}")


def read_stored_bytes(path: str | os.PathLike[str], *, root: str | os.PathLike[str], fix: str) -> bytes:
    """The bytes of ``path``, a regular file that lies in ``root`` (no link on the way); else one line ending in ``fix``."""
    path = Path(path)
    real_root = os.path.realpath(root)
    parent = os.path.realpath(path.parent)
    if parent != real_root and not parent.startswith(real_root.rstrip(os.sep) + os.sep):
        raise _damaged(path, f"lies outside {root} (a link on its way)", fix)
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise _damaged(path, "is missing", fix) from None
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = 0
        kind = next((name for test, name in _KINDS if test(mode)), None)
        why = f"is {kind}, not a file layerswap wrote" if kind else f"cannot be read ({exc.strerror or exc})"
        raise _damaged(path, why, fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise _damaged(path, f"is {kind}, not a file layerswap wrote", fix)
        if st.st_size > MAX_STORED_BYTES:
            raise _damaged(path, f"is {st.st_size} bytes, more than layerswap ever stores there", fix)
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})", fix) from None
    finally:
        os.close(fd)


def read_stored_text(path: str | os.PathLike[str], *, root: str | os.PathLike[str], fix: str) -> str:
    """:func:`read_stored_bytes` as UTF-8 text."""
    try:
        return read_stored_bytes(path, root=root, fix=fix).decode("utf-8")
    except UnicodeDecodeError:
        raise _damaged(Path(path), "is not UTF-8 text", fix) from None


def read_stored_json(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str], fix: str = "delete it and rerun"
) -> dict[str, Any]:
    """A stored JSON object (see :func:`read_stored_bytes`); anything else is one line ending in ``fix``."""
    text = read_stored_text(path, root=root, fix=fix)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise _damaged(Path(path), "is not valid JSON (cut or edited)", fix) from None
    if not isinstance(data, dict):
        raise _damaged(Path(path), f"holds a JSON {type(data).__name__}, not the object layerswap wrote", fix)
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


#: Fields every stored result row has, and whether each must be a number (NaN allowed) or text.
ROW_FIELDS = {"candidate": str, "task": str, "language": str, "metric": str, "value": float, "n": float}


def check_result_rows(record: dict[str, Any], path: Path, fix: str) -> list[dict[str, Any]]:
    """The ``rows`` of a stored result record, each with the fields and types of :data:`ROW_FIELDS`."""
    rows = record.get("rows")
    if not isinstance(rows, list) or not rows:
        raise _damaged(path, "has no result rows", fix)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _damaged(path, f"row {i} is not an object", fix)
        for field, kind in ROW_FIELDS.items():
            value = row.get(field)
            ok = _number(value) is not None or value is None if kind is float else isinstance(value, str)
            if not ok:
                raise _damaged(
                    path, f"row {i} has {field} {str(value)[:40]!r}, not a {'number' if kind is float else 'text'}", fix
                )
    return rows


def headline_value(scores: Any, task: str, language: str) -> tuple[float, int] | None:
    """A task's headline metric in one language recomputed from per-example scores (a frame with
    task, lang, score and optional num/den): ``sum(num) / sum(den)`` where given, else the mean score."""
    sub = scores[(scores["task"] == task) & (scores["lang"] == language)]
    if sub.empty:
        return None
    if "num" in sub and "den" in sub and sub["num"].notna().all() and sub["den"].notna().all():
        return float(sub["num"].sum() / sub["den"].sum()), len(sub)
    return float(sub["score"].mean()), len(sub)


def check_rows_match_scores(
    rows: list[dict[str, Any]], scores: Any, *, what: str, fix: str, headline: Callable[[str], str] | None = None
) -> None:
    """Every headline row (one with ``n``) must say what its per-example scores give: its value and its n.

    ``headline(task)`` names a task's headline metric; rows of its other metrics (language fidelity beside
    MGSM's exact match, which carry their own interval and n) are not what the scores column holds and are
    skipped. Without it, every row with an ``n`` is checked."""
    for row in rows:
        n = _number(row.get("n"))
        if n is None or math.isnan(n):
            continue
        if headline is not None and row.get("metric") != headline(row["task"]):
            continue
        expected = headline_value(scores, row["task"], row["language"])
        value = _number(row.get("value"))
        if expected is None or value is None:
            raise CheckpointError(f"the stored result of {what} has no scores for {row['task']}/{row['language']}: {fix}")
        want, count = expected
        same = (math.isnan(want) and math.isnan(value)) or math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9)  # the task's own float32 sums may differ in the last digits
        if not same or int(n) != count:
            raise CheckpointError(
                f"the stored result of {what} does not match its scores ({row['task']}/{row['language']}: {row['metric']} "
                f"{value:g} on n={int(n)}, its scores give {want:g} on n={count}): {fix}"
            )


def check_stored_result(
    record: dict[str, Any], scores: Any, path: Path, *, what: str, fix: str, headline: Callable[[str], str] | None = None
) -> None:
    """A stored result record (``rows``, optional ``scores_sha1``) checked against its schema and, where it has
    per-example scores, every headline row against them (:func:`check_rows_match_scores`)."""
    rows = check_result_rows(record, path, fix)
    if scores is not None:
        check_rows_match_scores(rows, scores, what=what, fix=fix, headline=headline)


def parse_stored_scores(text: str, path: Path, *, read: Any, fix: str) -> Any:
    """Per-example scores stored as CSV text, parsed by ``read`` (the sweep's reader) and checked: the
    columns task, lang, id and score, numbers where numbers belong, and each example once."""
    try:
        scores = read(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise _damaged(path, f"holds scores that are not the numbers layerswap wrote ({str(exc)[:60]})", fix) from None
    missing = [c for c in ("task", "lang", "id", "score") if c not in scores]
    if missing:
        raise _damaged(path, f"holds scores without the column {missing[0]!r}", fix)
    if scores.duplicated(["task", "lang", "id"]).any():
        raise _damaged(path, "holds the same example's score twice", fix)
    return scores


def check_unit_record(record: dict[str, Any], unit: dict[str, Any], path: Path, fix: str) -> None:
    """A halving unit's record must be the unit it is named for and hold its scores as text."""
    if record.get("unit") != unit:
        raise _damaged(path, f"describes unit {str(record.get('unit'))[:60]}, not {unit.get('candidate')} {unit.get('start')}-{unit.get('stop')}", fix)
    if not isinstance(record.get("scores"), str):
        raise _damaged(path, "holds no scores", fix)
