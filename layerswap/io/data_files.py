"""Where the datasets live, and readers for their files (lines, JSONL, TSV) with one-line errors.

Shared by fine-tuning (GSM8K train, NTREX, TICO-19, Tatoeba), importance and evaluation
(MGSM, GSM8K test, FLORES-200, SIB-200). Files come from a local folder laid out like
``../shared/data`` (``--data-dir`` or ``LAYERSWAP_DATA_DIR``); the Hub is used only when no
folder is found and ``datasets`` can reach it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

from layerswap.errors import DataError, InputPathError


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None, *, required: bool = False) -> Path | None:
    """``explicit`` > ``$LAYERSWAP_DATA_DIR`` > ``./shared/data`` or ``../shared/data`` beside the cwd."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise InputPathError(f"data folder {path} does not exist: pass --data-dir with the folder that holds mgsm/, gsm8k/, ...")
        return path
    env = os.environ.get("LAYERSWAP_DATA_DIR")
    if env:
        return resolve_data_dir(env, required=required)
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if (candidate / "mgsm").is_dir():
            return candidate
    if required:
        raise InputPathError("no data folder found: pass --data-dir (laid out like ../shared/data) or set LAYERSWAP_DATA_DIR")
    return None


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a text file; a missing or empty file is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"data file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"data file {path} is empty: pass a file with at least one line of text")
    return lines


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)``; a malformed line names the file and line."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"data file {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(f"{path} line {lineno} is not valid JSON: fix or remove that line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {lineno} is not a JSON object with named fields")
            yield lineno, record


def iter_tsv(path: str | os.PathLike[str], *, header: bool = True, fieldnames: list[str] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of a TSV file (no quoting: MGSM questions contain quotes)."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"data file {path} does not exist")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = fieldnames
        for lineno, row in enumerate(reader, 1):
            if not row or not any(c.strip() for c in row):
                continue
            if names is None and header:
                names = row
                continue
            if names is None:
                names = [str(i) for i in range(len(row))]
            yield lineno, dict(zip(names, row, strict=False))


def require_fields(record: dict[str, Any], fields: list[str], *, path: Path | str, lineno: int) -> None:
    """Refuse a record that lacks one of ``fields`` (or holds it empty), naming the file and line."""
    missing = [f for f in fields if f not in record or record[f] in (None, "")]
    if missing:
        raise DataError(
            f"{path} line {lineno} lacks field {missing[0]!r} (has: {', '.join(map(str, record)) or 'nothing'}): "
            "name the right field or fix the file"
        )
