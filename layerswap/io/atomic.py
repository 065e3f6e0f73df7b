"""Atomic outputs: every output folder is written in a temporary sibling and renamed at the end.

An interrupted run leaves either nothing or the previous output (see docs/reliability.md); a
writer killed between its two final renames is tidied up by the next one (:func:`recover_interrupted`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerswap.errors import InputPathError, OutputExistsError
from layerswap.files import replace_file
from layerswap.io.outputs import check_output, check_replaceable, describe_previous, plain_output, write_error
from layerswap.io.syscalls import fsync_dir, fsync_tree


def prepare_output_dir(out: str | os.PathLike[str], overwrite: bool, *, inputs: Iterable[Any] = (), option: str = "--out") -> Path:
    """Check an output folder may be written (:func:`layerswap.io.outputs.check_output`); return its path.

    Nothing is created yet, not even a parent folder: :class:`AtomicDir` creates them when it starts writing.
    """
    return check_output(out, inputs, overwrite=overwrite, option=option)


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out: Path) -> None:
    """Tidy up after a writer of ``out`` that was killed: drop its temporary folder, and bring back
    the previous output it had moved aside if the kill fell between the two final renames."""
    parent = out.parent
    if not parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}")
    for path in sorted(parent.iterdir()):
        m = pattern.fullmatch(path.name)
        if not m or pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


class AtomicDir:
    """A temporary sibling folder renamed onto ``out`` on success and removed on failure.

    Used for every output folder: an interrupted run leaves either nothing or the previous output.
    Parent folders that do not exist are created when writing starts and removed again if it fails.
    ``inputs`` are the paths the writer reads (refused as outputs); ``replace_any`` lets ``overwrite``
    replace a folder layerswap did not write (only for a location layerswap owns, such as its model cache).
    """

    def __init__(
        self, out: str | os.PathLike[str], *, overwrite: bool = False, inputs: Iterable[Any] = (), replace_any: bool = False
    ) -> None:
        recover_interrupted(plain_output(out))
        self.replace_any = replace_any
        self.out = Path(out) if replace_any else check_output(out, inputs, overwrite=overwrite)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created: Path | None = None  # the topmost parent folder this writer created

    def __enter__(self) -> Path:
        try:
            missing = []
            parent = Path(os.path.abspath(self.out.parent))
            while not os.path.lexists(parent) and parent != parent.parent:
                missing.append(parent)
                parent = parent.parent
            for folder in reversed(missing):
                folder.mkdir()
                self.created = self.created or folder
            self.tmp.mkdir()
        except OSError as exc:
            self._remove_created()
            mapped = write_error(self.out, exc)
            if mapped is not None:
                raise mapped from exc
            raise
        return self.tmp

    def _remove_created(self) -> None:
        """Remove the parent folders this writer created (only while they are empty)."""
        if self.created is None:
            return
        folder = Path(os.path.abspath(self.out.parent))
        while True:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self.created:
                break
            folder = folder.parent
        self.created = None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            try:
                fsync_tree(self.tmp)  # the rename must never publish files whose data is still only in memory
            except OSError as failed:
                exc = failed
        if exc is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_created()
            mapped = write_error(self.out, exc) if isinstance(exc, OSError) else None
            if mapped is not None:
                raise mapped from exc
            if exc_type is None:
                raise exc
            return
        try:
            self.commit()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._remove_created()
            raise

    def commit(self) -> None:
        old = None
        if os.path.lexists(self.out):
            if not (self.overwrite or self.replace_any):
                raise OutputExistsError(f"output {self.out} appeared while writing: choose another path or pass --overwrite")
            if not self.replace_any:
                check_replaceable(self.out)  # it may have changed since the start
            replaced = describe_previous(self.out)
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        fsync_dir(self.out.parent)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
            if not self.replace_any and replaced != "an empty folder":
                warnings.warn(f"--overwrite: replaced {self.out} ({replaced})", stacklevel=2)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a small file with :func:`layerswap.files.replace_file` (never torn, never through a link);
    an OS failure is one line (a full disk keeps the previous file), a folder at ``path`` is refused.

    A regular file that already holds exactly ``data`` is left as it is: a rerun that changes nothing
    (a resumed sweep's ``sweep.yaml``) writes nothing."""
    path = Path(path)
    try:
        if _holds(path, data):
            return path
        return replace_file(path, data)
    except IsADirectoryError as exc:
        raise InputPathError(f"{path} is a folder where layerswap writes a file: remove it or choose another output") from exc
    except OSError as exc:
        mapped = write_error(path, exc)
        if mapped is not None:
            raise mapped from exc
        raise


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file (not a link) whose bytes are ``data``."""
    import stat

    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as fh:
            return fh.read(len(data) + 1) == data
    except OSError:
        return False


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))
