"""The one guard every output passes: inputs are sacred, and ``--overwrite`` replaces only layerswap's own work.

Every library function that writes (merge, swap, analyze, importance, finetune and its work folder,
evaluate's save, the sweep with its saved model and figures, the mergekit export) calls
:func:`check_output` with its inputs before it creates anything. Paths are compared resolved
(``realpath``), so a link, ``..`` or ``.`` cannot hide that an output is an input. The rules:

- an output that equals, contains or lies inside an input (model or adapter folder, data file,
  config, data folder) is refused, with or without ``--overwrite``;
- an output that is a symbolic link (dangling or not) is refused: it is not clear what it would replace;
  a folder that is resumed (a sweep's, a demo's) must hold no link at all (:func:`refuse_links_inside`);
- an existing output is refused without ``--overwrite``; with it, only a folder whose
  ``layerswap.json`` says layerswap wrote it (:func:`written_by_layerswap`), or an empty one, is replaced;
- an output under a file, with a name over the file system's limit, or in a folder that cannot be
  written is refused before any work; nothing, not even a parent folder, is created here.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerswap.errors import InputPathError, LayerswapError, OutputExistsError, WriteFailedError
from layerswap.io.provenance import PROVENANCE_NAME

#: Characters the atomic writer adds to an output's name for its temporary sibling (".NAME.tmp-PID-8hex").
TEMP_SUFFIX_ROOM = 32

PathLike = str | os.PathLike[str]


def resolved(path: PathLike) -> Path:
    """``path`` with ``~`` expanded and every link, ``.`` and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def plain_output(out: PathLike) -> Path:
    """``out`` as a path whose last part is a real name (``.``, ``..`` and ``~`` resolved)."""
    path = Path(os.path.expanduser(os.fspath(out)))
    if path.name in ("", ".", ".."):
        return resolved(path)
    return path


def input_paths(*inputs: Any) -> list[Path]:
    """The resolved paths of whatever names an input: paths, strings, None, and lists or dicts of them.

    An embedded model's short name (``gemma3-270m``) stands for its cache folder
    (``cache_dir()/models/NAME``, as :func:`~layerswap.io.resolve.resolve_model` uses it; nothing is
    prepared here). Other strings that are not paths on disk (``gsm8k``, ``hf:NAME``) are skipped; a data
    spec's ``?key=value`` options are dropped. A folder also brings the targets of its own links (the
    Hugging Face cache links ``snapshots/REV/*`` to ``blobs/``), so an output cannot replace those either.
    """
    found: list[Path] = []

    def add(item: Any) -> None:
        if item is None:
            return
        if isinstance(item, dict):
            for value in item.values():
                add(value)
            return
        if isinstance(item, (list, tuple, set, frozenset)):
            for value in item:
                add(value)
            return
        if hasattr(item, "path") and not isinstance(item, (str, os.PathLike)):  # a ModelFolder or LoraAdapter
            add(item.path)
            return
        if not isinstance(item, (str, os.PathLike)):
            return
        text = os.path.expanduser(os.fspath(item))
        if not os.path.lexists(text) and "?" in text:
            text = text.split("?", 1)[0]
        if not os.path.lexists(text) and isinstance(item, str) and (cached := _embedded_folder(text)) is not None:
            found.append(resolved(cached))  # an input even before it is prepared: preparing would create it
            text = cached
        if not os.path.lexists(text):
            return
        path = resolved(text)
        found.append(path)
        if path.is_dir():
            try:
                entries = list(os.scandir(path))
            except OSError:
                entries = []
            for entry in entries:
                if entry.is_symlink() and os.path.isfile(entry.path):  # files only: a linked folder is not read whole
                    found.append(resolved(entry.path))

    add(list(inputs))
    return list(dict.fromkeys(found))


def _embedded_folder(name: str) -> str | None:
    """The cache folder an embedded model's short name (``gemma3-270m``) resolves to, else None (nothing prepared)."""
    from layerswap.io.embedded import EMBEDDED, cache_dir

    return os.fspath(cache_dir() / "models" / name) if name in EMBEDDED else None


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_not_input(out: PathLike, inputs: Iterable[Path], *, option: str = "--out", contains: bool = True) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (resolved paths).

    ``contains=False`` allows a folder around an input: for a folder that only receives named files
    (``--figures``), never replaced as a whole.
    """
    where = resolved(out)
    for path in inputs:
        if where == path:
            problem = f"is the input {path}"
        elif _inside(where, path):
            problem = f"lies inside the input {path}"
        elif contains and _inside(path, where):
            problem = f"contains the input {path}"
        else:
            continue
        raise InputPathError(
            f"{option} {out} {problem}: layerswap never writes over, into or around an input, "
            "even with --overwrite; choose another path"
        )


def written_by_layerswap(folder: PathLike) -> dict[str, Any] | None:
    """The provenance record of a folder layerswap wrote (its ``layerswap.json``), else None."""
    path = Path(folder) / PROVENANCE_NAME
    try:
        if not path.is_file() or path.is_symlink():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and "layerswap_version" in record:
        return record
    return None


def describe_previous(folder: PathLike) -> str:
    """One phrase saying what a layerswap folder holds: ``a merge written by layerswap 0.3 at ...``."""
    record = written_by_layerswap(folder)
    if record is None:
        return "an empty folder"
    kind = record.get("kind", "output")
    return f"{kind} written by layerswap {record.get('layerswap_version', '?')} at {record.get('created', '?')}"


def check_replaceable(out: Path, *, option: str = "--out") -> None:
    """An existing ``out`` may be replaced by ``--overwrite`` only if layerswap wrote it (or it is empty)."""
    if out.is_symlink():
        raise InputPathError(f"{option} {out} is a symbolic link: pass the folder itself or choose another path")
    if not out.is_dir():
        raise OutputExistsError(
            f"{option} {out} is a file, and --overwrite replaces only a folder layerswap wrote: remove it yourself or choose another path"
        )
    if written_by_layerswap(out) is None and any(out.iterdir()):  # an empty folder holds nothing to lose
        raise OutputExistsError(
            f"{option} {out} was not written by layerswap (no {PROVENANCE_NAME}), and --overwrite replaces only "
            "a folder layerswap wrote: remove it yourself or choose another path"
        )


def existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` (or ``path`` itself) that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_location(out: Path, *, option: str = "--out") -> None:
    """``out`` can be created: not under a file, a name the file system takes, a parent that can be written."""
    above = existing_ancestor(out.parent)
    if not above.is_dir():
        raise InputPathError(f"{option} {out} lies under {above}, which is a file, not a folder: choose another path")
    try:
        limit = os.pathconf(above, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    parts = Path(os.path.abspath(out)).relative_to(above).parts
    for i, part in enumerate(parts):
        room = TEMP_SUFFIX_ROOM if i == len(parts) - 1 else 0
        if len(os.fsencode(part)) + room > limit:
            raise InputPathError(
                f"{option} {out}: the name {part[:24]}... is {len(os.fsencode(part))} bytes, over the file system's limit "
                f"of {limit - room} for an output name: choose a shorter name"
            )
    if not os.access(above, os.W_OK | os.X_OK):
        reason = "it is on a read-only file system" if _read_only(above) else "permission denied"
        raise WriteFailedError(f"cannot write {option} {out} in {above}: {reason}; nothing was written. Choose another path")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_path_length(path: Path, *, option: str = "--out") -> None:
    """Refuse a path the system cannot take (a name over ``NAME_MAX``, the whole over ``PATH_MAX``) before it is touched:
    every later ``stat`` of it would fail with ENAMETOOLONG."""
    absolute = os.path.abspath(path)
    above = existing_ancestor(Path(absolute))
    try:
        name_max, path_max = os.pathconf(above, "PC_NAME_MAX"), os.pathconf(above, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    shown = absolute if len(absolute) <= 80 else f"{absolute[:60]}...{absolute[-12:]}"
    for part in Path(absolute).parts:
        if len(os.fsencode(part)) > name_max:
            raise InputPathError(
                f"{option} {shown}: the name {part[:24]}... is {len(os.fsencode(part))} bytes, over the file system's limit "
                f"of {name_max}: choose a shorter name"
            )
    if len(os.fsencode(absolute)) + TEMP_SUFFIX_ROOM >= path_max:
        raise InputPathError(
            f"{option} {shown}: the path is {len(os.fsencode(absolute))} bytes, over the system's limit of "
            f"{path_max - TEMP_SUFFIX_ROOM} for an output: choose a shorter path"
        )


def _plain_not_input(out: PathLike, inputs: Iterable[Any], option: str) -> Path:
    """``out`` as a plain path, refused where it is, holds or lies inside one of ``inputs``."""
    path = plain_output(out)
    check_path_length(path, option=option)
    check_not_input(path, input_paths(inputs), option=option)
    return path


def check_output(
    out: PathLike,
    inputs: Iterable[Any] = (),
    *,
    overwrite: bool = False,
    option: str = "--out",
    may_exist: bool = False,
    resume_marker: str | None = None,
) -> Path:
    """Check an output folder before anything is created; return it as a plain path (module docstring).

    ``inputs``: paths (or lists/dicts of them) the command reads. ``may_exist``: an existing folder
    is resumed, not replaced (the sweep), so it is not checked for provenance; but a folder that is
    not empty must hold ``resume_marker`` (the file the resumable command writes first).
    """
    path = _plain_not_input(out, inputs, option)
    if path.is_symlink():
        target = os.readlink(path)
        state = "a dangling symbolic link" if not path.exists() else "a symbolic link"
        raise InputPathError(f"{option} {path} is {state} (to {target}): remove the link or choose another path")
    if path.exists():
        if may_exist:
            if not path.is_dir():
                raise OutputExistsError(f"{option} {path} is a file, not a folder: choose another path")
            if resume_marker is not None and not (path / resume_marker).is_file() and any(path.iterdir()):
                raise OutputExistsError(
                    f"{option} {path} is a folder of something else (no {resume_marker}; rerunning resumes only in the "
                    "command's own folder): choose a new or empty folder"
                )
            refuse_links_inside(path, option=option)
            return path
        if not overwrite:
            raise OutputExistsError(f"output {path} already exists: choose another path or pass --overwrite")
        check_replaceable(path, option=option)
        return path
    check_location(path, option=option)
    return path


def refuse_links_inside(folder: Path, *, option: str = "--out") -> None:
    """A folder layerswap resumes in (a sweep's, a demo's) must hold no symbolic link anywhere.

    layerswap itself never creates one there, and rerunning rewrites and rereads the folder's files:
    a link planted at one of its names (a figure, ``candidates/NAME.json``) would be written through
    or read from outside the folder. Links are not followed while looking.
    """
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                raise InputPathError(
                    f"{option} {folder} holds a symbolic link, {link} (to {os.readlink(link)}), and layerswap never writes "
                    "through or reads a link inside its own folder: delete the link and rerun"
                )


def check_output_file(
    path: PathLike,
    inputs: Iterable[Any] = (),
    *,
    overwrite: bool = False,
    option: str = "--emit-mergekit",
    written_marker: str | None = None,
    outputs: Iterable[PathLike] = (),
) -> Path:
    """Check a single output file (the mergekit YAML) the same way as :func:`check_output`.

    An existing file is replaced only with ``overwrite`` and only if its first line starts with
    ``written_marker`` (the header layerswap writes); ``outputs`` are the command's other outputs,
    which the file must not be or contain (it may lie inside one: it is written after them).
    """
    file = _plain_not_input(path, inputs, option)
    for other in outputs:
        where, folder = resolved(file), resolved(other)
        if where == folder or _inside(folder, where):  # inside the new output is fine: it is written after it
            raise InputPathError(f"{option} {file} overlaps the output {other}: choose a file beside or inside it")
    if file.is_symlink():
        raise InputPathError(f"{option} {file} is a symbolic link: remove the link or choose another path")
    if file.is_dir():
        raise InputPathError(f"{option} {file} is a folder: pass a file path, e.g. {file / 'mergekit.yaml'}")
    if file.exists():
        if not overwrite:
            raise OutputExistsError(f"{option} {file} already exists: choose another path or pass --overwrite")
        try:
            with open(file, encoding="utf-8", errors="replace") as fh:
                first = fh.readline()
        except OSError:
            first = ""
        if written_marker is None or not first.startswith(written_marker):
            raise OutputExistsError(
                f"{option} {file} was not written by layerswap, and --overwrite replaces only layerswap's own files: "
                "remove it yourself or choose another path"
            )
        return file
    check_location(file, option=option)
    return file


def write_error(out: PathLike, exc: OSError) -> LayerswapError | None:
    """The one-line error for an OS failure while writing ``out`` (None: not an environment failure)."""
    code = exc.errno
    if code in (errno.ENAMETOOLONG,):
        return InputPathError(f"cannot write {out}: a name is over the file system's limit; nothing was written. Choose a shorter name")
    if code in (errno.ENOTDIR,):
        return InputPathError(f"cannot write {out}: a folder on its path is a file; nothing was written. Choose another path")
    if code in (errno.EMFILE, errno.ENFILE):
        return WriteFailedError(
            f"writing {out} failed: too many open files (ulimit -n {_open_file_limit()}); nothing was written. "
            "Raise the limit (ulimit -n 4096) or pass a larger max_shard_size"
        )
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG):
        return WriteFailedError(
            f"writing {out} failed: {os.strerror(code or 0)}; nothing was written. Free space or pick another path"
        )
    return None


def _open_file_limit() -> str:
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "?"
