"""One run per output: an exclusive lock on an output (or work) folder for as long as a run writes it.

A second run into the same folder (two ``finetune --out X`` at once: the second would clear the first's
live work folder) gets one line naming the PID that holds it. The lock is ``flock`` on a file keyed by
the folder's resolved path, kept under the cache (``$LAYERSWAP_CACHE/locks``, else the temporary
folder), so taking it writes nothing beside the user's outputs and works before the folder exists. The
kernel drops a ``flock`` when its process dies, so a run that was killed never blocks the next one;
its lock file, left behind with a dead PID, is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from layerswap.errors import OutputExistsError
from layerswap.io.atomic import pid_alive
from layerswap.io.outputs import resolved


def _lock_dir() -> Path:
    from layerswap.io.embedded import cache_dir

    for folder in (cache_dir() / "locks", Path(tempfile.gettempdir()) / f"layerswap-locks-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK) and not folder.is_symlink():
            return folder
    raise OutputExistsError(f"cannot create a lock folder under {cache_dir()}: set LAYERSWAP_CACHE to a writable folder")


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """The lock file of ``folder`` (the same for every spelling of its path)."""
    key = hashlib.sha256(os.fsencode(resolved(folder))).hexdigest()[:32]
    return _lock_dir() / f"{key}.lock"


def _holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _acquire(folder: Path, option: str) -> tuple[int, Path]:
    path = lock_path(folder)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = holder.get("pid", "unknown")
            raise OutputExistsError(
                f"{option} {folder} is in use by another layerswap run (PID {pid}): wait for it to end or choose another path"
            ) from None
        try:  # the file may have been removed by its previous holder between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _holder(fd)
    pid = previous.get("pid")
    if isinstance(pid, int) and pid > 0 and pid != os.getpid() and not pid_alive(pid):
        warnings.warn(
            f"{option} {folder} was locked by PID {pid}, which is no longer running (an interrupted run): taking it over",
            stacklevel=3,
        )
    record = json.dumps({"pid": os.getpid(), "folder": str(resolved(folder))}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    return fd, path


@contextlib.contextmanager
def output_lock(folders: dict[str | os.PathLike[str], str]) -> Iterator[None]:
    """Hold an exclusive lock on each folder (mapped to the option that named it) until the block ends."""
    held: list[tuple[int, Path]] = []
    named = {resolved(f): option for f, option in folders.items()}
    try:
        for folder in sorted(named):  # a fixed order: two runs never wait on each other's second lock
            held.append(_acquire(folder, named[folder]))
        yield
    finally:
        for fd, path in reversed(held):
            with contextlib.suppress(OSError):
                os.unlink(path)  # unlinked while still held: a waiting opener re-checks the inode (see _acquire)
            os.close(fd)
