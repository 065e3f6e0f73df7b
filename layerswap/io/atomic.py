"""Atomic outputs: every output folder is written in a temporary sibling and renamed at the end.

An interrupted run leaves either nothing or the previous output (see docs/reliability.md); a
writer killed between its two final renames is tidied up by the next one (:func:`recover_interrupted`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from layerswap.errors import OutputExistsError, WriteFailedError
from layerswap.io.syscalls import fsync_dir, fsync_tree


def prepare_output_dir(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check an output folder may be written; return its path. Nothing is created yet."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists: choose another path or pass --overwrite")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _pid_alive(pid: int) -> bool:
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
        if not m or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


class AtomicDir:
    """A temporary sibling folder renamed onto ``out`` on success and removed on failure.

    Used for every output folder: an interrupted run leaves either nothing or the previous output.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        recover_interrupted(Path(out))
        self.out = prepare_output_dir(out, overwrite)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            try:
                fsync_tree(self.tmp)  # the rename must never publish files whose data is still only in memory
            except OSError as failed:
                exc = failed
        if exc is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
                raise WriteFailedError(
                    f"writing {self.out} failed: {os.strerror(exc.errno or 0)}; nothing was written. Free space or pick another path"
                ) from exc
            if exc_type is None:
                raise exc
            return
        self.commit()

    def commit(self) -> None:
        old = None
        if self.out.exists():
            if not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise OutputExistsError(f"output {self.out} appeared while writing: choose another path or pass --overwrite")
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        fsync_dir(self.out.parent)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a small text file via a temporary sibling and ``os.replace``: never a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
