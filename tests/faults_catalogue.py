"""What the bad-input catalogue is made of: the :class:`Env` of good and broken inputs, the :class:`Case`,
and the helpers that build broken models. ``tests/test_faults.py`` runs the cases; each topic module
(``faults_*.py``) adds its own broken inputs (``build(env)``) and its cases (``CASES``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerswap.errors import EXIT_CODES


@dataclass
class Env:
    """Paths of good and deliberately broken inputs. ``sandbox`` is where a case's output would go."""

    root: Path
    base: Path
    math: Path
    lang: Path
    lora: Path
    sandbox: Path = field(default_factory=Path)

    def p(self, name: str) -> Path:
        return self.root / name

    @property
    def out(self) -> str:
        return str(self.sandbox / "out")

    def yaml(self, name: str, text: str) -> str:
        path = self.sandbox / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def swap(self, *extra: str) -> list[str]:
        return ["swap", "--math", str(self.math), "--lang", str(self.lang), "--out", self.out, *extra]

    def merge_yaml(self, body: str) -> list[str]:
        return ["merge", self.yaml("merge.yaml", body), "--out", self.out]


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _write_sd(out: Path, donor: Path, edit: Callable[[dict[str, torch.Tensor]], None], config: dict | None = None) -> Path:
    from layerswap.io import write_tensors
    from layerswap.testing import state_dict_of

    sd = dict(state_dict_of(donor))
    edit(sd)
    write_tensors(out, sd, donor=donor, config_updates=config)  # the writer refuses a config that contradicts the tensors
    return out


@dataclass(frozen=True)
class Case:
    """One bad input: how to run it, which error it must raise, and what its message must say."""

    id: str
    shown: str  # the command as the docs show it
    argv: Callable[[Env], list[str]]
    error: str  # name of the LayerswapError subclass (its exit code is documented in errors.py)
    problem: str  # fragment of the message naming the problem
    fix: str  # fragment of the message naming the fix
    needs_permissions: bool = False  # relies on file modes, which bind root only where emulated (see test_bad_input)
    setup: Callable[[Env], None] | None = None  # run in the case's sandbox before the snapshot (e.g. a previous output)
    environ: Callable[[Env], dict[str, str]] | None = None  # environment variables set for the run (e.g. LAYERSWAP_CACHE)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.error]


def _vocab(model: Path) -> int:
    return int(json.loads((model / "config.json").read_text())["vocab_size"])


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``folder`` with its size, mtime and the SHA-256 of a regular file's bytes
    (hidden temporary siblings included): inputs must come out of every case byte for byte the same."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns, file_hash(p, st))
    return out


def file_hash(path: Path, st: os.stat_result | None = None) -> str:
    """SHA-256 of a regular file (not followed through links; never opens a FIFO or device), else ''."""
    import hashlib
    import stat

    st = st or path.lstat()
    if not stat.S_ISREG(st.st_mode):
        return ""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return "(unreadable)"


def hook_opens(monkeypatch, before: Callable[[object], None]) -> None:  # noqa: ANN001
    """Call ``before(file)`` ahead of every Python-level open (``open``, ``io.open``, ``Path.open``,
    ``os.open``); it may record the file or raise as the kernel would."""
    import builtins
    import io

    real_open, real_os_open = io.open, os.open

    def hooked_open(file, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        before(file)
        return real_open(file, *a, **k)

    def hooked_os_open(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        before(path)
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(io, "open", hooked_open)
    monkeypatch.setattr(builtins, "open", hooked_open)
    monkeypatch.setattr(os, "open", hooked_os_open)
