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
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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


def _check_file(path: Path) -> None:
    """A data file must exist and be a regular file (not a folder, FIFO or device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputPathError(f"data file {path} does not exist: pass a jsonl/tsv/text file") from None
    except OSError as exc:
        raise InputPathError(f"cannot read data file {path}: {exc.strerror or exc}: check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputPathError(f"data path {path} is a folder: pass a JSONL, TSV or text file")
    if not stat.S_ISREG(st.st_mode):
        raise InputPathError(f"data path {path} is not a regular file: pass a JSONL, TSV or text file")


def _open_binary(path: Path) -> BinaryIO:
    _check_file(path)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputPathError(f"cannot read data file {path}: {exc.strerror or exc}: check the path and its permissions") from None


#: The largest JSON or YAML data file read whole (MGSM's exemplars are 40 kB; analysis boundaries a few kB).
MAX_WHOLE_FILE = 64 << 20


def _whole_text(path: Path) -> str:
    """A small data file's text: a regular file (never a folder or a FIFO), bounded, UTF-8."""
    with _open_binary(path) as fh:
        raw = fh.read(MAX_WHOLE_FILE + 1)
    if len(raw) > MAX_WHOLE_FILE:
        raise DataError(f"{path} is over {MAX_WHOLE_FILE >> 20} MiB, too large for the file it should be: check the path")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: restore the file or convert it to UTF-8") from None


def read_data_json(path: str | os.PathLike[str]) -> Any:
    """A JSON data file (MGSM's exemplars): cut, edited or not JSON is one line."""
    path = Path(path)
    try:
        return json.loads(_whole_text(path))
    except (ValueError, RecursionError):
        raise DataError(f"{path} is not valid JSON (cut or edited?): restore the file from its source") from None


def read_data_yaml(path: str | os.PathLike[str]) -> Any:
    """A YAML file layerswap reads as input (an analysis's ``boundaries.yaml``): not YAML is one line."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(_whole_text(path))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise DataError(f"{path} is not valid YAML{line}: fix it or write it again (layerswap analyze writes boundaries.yaml)") from None


def _not_utf8(path: Path, lineno: int) -> DataError:
    return DataError(f"{path} line {lineno} is not UTF-8 text: convert the file to UTF-8 (e.g. iconv -t UTF-8)")


#: The longest line a data file may have: files are read a line at a time, so one line bounds the memory.
MAX_LINE_BYTES = 16 << 20


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file (a leading BOM is dropped); bad bytes name the line.

    Read a line at a time, each at most :data:`MAX_LINE_BYTES` (a 500 MB file of one line is refused
    after 16 MiB, never read whole to take a few examples)."""
    with _open_binary(path) as fh:
        lineno = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(
                    f"{path} line {lineno} is over {MAX_LINE_BYTES >> 20} MiB, longer than any example: split it into lines "
                    "(one example or sentence per line)"
                )
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise _not_utf8(path, lineno) from None


def iter_text(path: str | os.PathLike[str]) -> Iterator[str]:
    """The lines of a text file (``str.splitlines`` of each line read), as they are read: stop early to read only a few."""
    path = Path(path)
    for _, line in _decoded_lines(path):
        yield from line.splitlines()


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a text file; a missing, empty, folder or non-UTF-8 file is a one-line error."""
    path = Path(path)
    lines = list(iter_text(path))
    if not any(line.strip() for line in lines):
        raise DataError(f"data file {path} is empty: pass a file with at least one line of text")
    return lines


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)``; a malformed line names the file and line."""
    path = Path(path)
    for lineno, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise DataError(f"{path} line {lineno} is not valid JSON: fix or remove that line") from None
        except RecursionError:
            raise DataError(f"{path} line {lineno} nests JSON too deeply: fix or remove that line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {lineno} is not a JSON object with named fields")
        yield lineno, record


def iter_tsv(path: str | os.PathLike[str], *, header: bool = True, fieldnames: list[str] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of a TSV file (no quoting: MGSM questions contain quotes); every row must
    have the header's number of fields."""
    path = Path(path)
    names = fieldnames
    for lineno, line in _decoded_lines(path):
        row = next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE), [])
        if not row or not any(c.strip() for c in row):
            continue
        if names is None and header:
            names = row
            continue
        if names is None:
            names = [str(i) for i in range(len(row))]
        if len(row) != len(names):  # a tab inside a field (quotes do not protect it) would shift the columns
            raise DataError(
                f"{path} line {lineno} has {len(row)} tab-separated fields where the file has {len(names)} "
                f"({', '.join(names)[:60]}): remove the tab inside a field (TSV quotes do not protect it) or fix the line"
            )
        yield lineno, dict(zip(names, row, strict=True))


def iter_records(path: str | os.PathLike[str], *, hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of a user's JSONL (``.jsonl``/``.json``) or headed TSV (``.tsv``/``.txt``) file;
    any other suffix is one line ending in ``hint`` (what the file should be)."""
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        return iter_jsonl(path)
    if path.suffix in (".tsv", ".txt"):
        return iter_tsv(path)
    raise DataError(f"{path}: {hint}")


def require_fields(record: dict[str, Any], fields: list[str], *, path: Path | str, lineno: int) -> None:
    """Refuse a record that lacks one of ``fields`` (or holds it empty), naming the file and line."""
    missing = [f for f in fields if f not in record or record[f] in (None, "")]
    if missing:
        raise DataError(
            f"{path} line {lineno} lacks field {missing[0]!r} (has: {', '.join(map(str, record)) or 'nothing'}): "
            "name the right field or fix the file"
        )
