"""The resume key: everything a stored sweep result depends on besides its candidate's merge.

Two parts. **Settings**: the :class:`~layerswap.sweep.config.SweepConfig` fields that change a
result, each field saying so itself (``json_schema_extra={"changes_results": ...}``; a field that
says nothing is refused, so a new field cannot be forgotten), existing paths resolved (``../data``
and its absolute spelling are one folder). **Inputs**: a content fingerprint of every file the
sweep reads: the base, the two experts and the data folder. Per file its size, its mtime and a
SHA-1 of its safetensors header (else its first block) and of one block from its middle: a
retrained expert written into the same folder changes all three, and no file is read whole.

A stored record keeps both parts, so a rerun that finds a record made with another key can say
what changed (``math``, ``settings``) before it evaluates the candidate again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: The ``json_schema_extra`` key by which a config field says whether it changes a stored result.
CHANGES_RESULTS = "changes_results"
#: Bytes read per sampled block.
BLOCK = 1 << 16
#: The inputs fingerprinted, in the order their changes are reported.
INPUTS = ("base", "math", "lang", "data", "tasks")


def result_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` that change a stored result; a field that does not say is refused."""
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if CHANGES_RESULTS not in extra:
            raise TypeError(f"{model.__name__}.{name} does not say whether it changes results: add json_schema_extra={{{CHANGES_RESULTS!r}: ...}}")
        if extra[CHANGES_RESULTS]:
            out.append(name)
    return tuple(out)


def _resolved(value: Any) -> Any:
    """An existing path as its absolute form; other values as given."""
    if isinstance(value, str) and value and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def settings_digest(config: BaseModel) -> str:
    """A digest of the config's result-changing fields (paths resolved)."""
    data = {k: _resolved(getattr(config, k)) for k in result_fields(type(config))}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_fingerprint(path: Path) -> str:
    """``size:mtime_ns:sha1`` of a file, the SHA-1 over its safetensors header (else its first block)
    and one block from the middle of the file."""
    stat = path.stat()
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors" and len(head) == 8:
            (length,) = struct.unpack("<Q", head)
            head += fh.read(min(length, stat.st_size))
        else:
            head += fh.read(BLOCK - len(head))
        digest.update(head)
        fh.seek(max(0, stat.st_size // 2 - BLOCK // 2))
        digest.update(fh.read(BLOCK))
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()[:16]}"


def path_fingerprint(path: str | os.PathLike[str] | None) -> str:
    """The fingerprint of a file, or of every file under a folder (by relative name); ``absent`` when missing."""
    if path is None:
        return "absent"
    root = Path(path).expanduser()
    if root.is_file():
        return file_fingerprint(root)
    if not root.is_dir():
        return "absent"
    digest = hashlib.sha1()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}={file_fingerprint(file)}\n".encode())
    return digest.hexdigest()[:16]


def input_fingerprints(config: Any) -> dict[str, str]:
    """The content fingerprint of the base, the experts, the data folder and any ``lm_eval:`` task files a sweep reads."""
    from layerswap.evaluate.tasks.lm_eval_bridge import input_paths
    from layerswap.io import resolve_data_dir

    data = config.data_dir if config.data_dir is not None else resolve_data_dir(None)
    found = {"base": path_fingerprint(config.base), "math": path_fingerprint(config.math), "lang": path_fingerprint(config.lang), "data": path_fingerprint(data)}
    files = [f for task in config.tasks for f in input_paths(task)]  # lm_eval: task YAMLs and their local data
    if files:
        found["tasks"] = hashlib.sha1("".join(f"{f}={path_fingerprint(f)}\n" for f in files).encode()).hexdigest()[:12]
    return found


@dataclass(frozen=True)
class ResumeKey:
    """The settings digest and the inputs' fingerprints; ``value`` is what a stored record must match."""

    settings: str
    inputs: tuple[tuple[str, str], ...] = ()

    @property
    def value(self) -> str:
        text = json.dumps({"settings": self.settings, "inputs": dict(self.inputs)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def record(self) -> dict[str, Any]:
        """What a stored record keeps: the value it must match and the parts, to say what changed."""
        return {"settings": self.value, "key_parts": {"settings": self.settings, **dict(self.inputs)}}

    def changed(self, record: Mapping[str, Any]) -> list[str]:
        """What differs between this key and the one ``record`` was stored with (``settings``, ``math``, ...)."""
        stored = record.get("key_parts")
        if not isinstance(stored, Mapping):
            return ["settings"]  # stored by a layerswap that kept no parts
        ours = {"settings": self.settings, **dict(self.inputs)}
        return [k for k in ("settings", *INPUTS) if stored.get(k) != ours.get(k)] or ["settings"]

    def for_settings(self, config: BaseModel) -> ResumeKey:
        """The same inputs with another config's settings (the halving screen's, the finals')."""
        return ResumeKey(settings_digest(config), self.inputs)


def settings_key(config: Any, inputs: Mapping[str, str] | None = None) -> ResumeKey:
    """The resume key of a sweep config: its settings and its inputs' fingerprints (``inputs``: already taken)."""
    found = input_fingerprints(config) if inputs is None else inputs
    return ResumeKey(settings_digest(config), tuple((k, found[k]) for k in INPUTS if k in found))


def as_key(key: ResumeKey | str) -> ResumeKey:
    """A key given as a plain string (a replayed race, a test) has no inputs."""
    return key if isinstance(key, ResumeKey) else ResumeKey(key)


def mismatch(record: Mapping[str, Any], fingerprint: str, key: ResumeKey) -> list[str]:
    """Why a stored record cannot be reused for a candidate (``merge``: its merge changed; ``settings``,
    ``math``, ...: the key's parts that changed); empty when it can."""
    if record.get("fingerprint") != fingerprint:
        return ["merge"]
    return [] if record.get("settings") == key.value else key.changed(record)


def reusable_record(path: Path, *, root: Path, fix: str, fingerprint: str, key: ResumeKey) -> tuple[dict[str, Any] | None, list[str]]:
    """The stored record at ``path`` when its merge and key match, else None and why not (empty when
    nothing is stored). The record is read as validated stored state (:func:`~layerswap.io.stored.read_stored_json`)."""
    from layerswap.io.stored import read_stored_json

    if not os.path.lexists(path):
        return None, []
    record = read_stored_json(path, root=root, fix=fix)
    why = mismatch(record, fingerprint, key)
    return (None, why) if why else (record, [])


def resume_line(what: str, total: int, stored: int, stale: Mapping[str, list[str]]) -> str:
    """``resuming: 4 of 6 candidates stored, 2 to evaluate; 1 stored with other settings or inputs
    (math changed): evaluated again``. ``stale``: per record made with another key, what changed."""
    line = f"resuming: {stored} of {total} {what} stored, {total - stored} to evaluate"
    if stale:
        reasons = ", ".join(f"{k} changed" for k in dict.fromkeys(r for why in stale.values() for r in why))
        line += f"; {len(stale)} stored with other settings or inputs ({reasons}): evaluated again"
    return line
