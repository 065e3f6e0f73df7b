"""Replacing one small file safely: the primitive under every small output file layerswap writes.

It lives in the foundation so that figures (``layerswap.figures``) and the core's writers
(:func:`layerswap.io.atomic.write_bytes_atomic`, which turns OS failures into one-line errors) share it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def replace_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a fresh temporary sibling, fsync it and rename it onto ``path``; raise ``OSError`` on failure.

    Never torn, never through a link: the temporary name is unpredictable and created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` (``tempfile.mkstemp``), so a link or file planted at a guessable
    name is never followed, and the rename replaces a link at ``path`` itself (its target is untouched)
    instead of writing through it. The temporary file is removed when anything fails.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(21, "a folder stands where a file is written", str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _file_mode())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
