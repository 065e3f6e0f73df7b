"""Short model names and paths -> an opened checkpoint.

Resolution imports only what it needs (the embedded models, the atomic writer that prepares them into the cache, and the two checkpoint views), so the
core has no circle: ``embedded`` knows nothing of checkpoints, and checkpoints nothing of names.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from layerswap.errors import InputPathError, OutputExistsError
from layerswap.io.atomic import AtomicDir
from layerswap.io.embedded import DEFAULT_MODEL, EMBEDDED, cache_dir
from layerswap.io.lora import LoraAdapter, is_adapter_folder
from layerswap.io.model_folder import ModelFolder
from layerswap.io.outputs import written_by_layerswap
from layerswap.io.provenance import PROVENANCE_NAME, write_provenance


def prepare_model(name: str = DEFAULT_MODEL, *, force: bool = False, quiet: bool = False) -> Path:
    """Prepare an embedded model once into the cache and return its folder (reused afterwards)."""
    if name not in EMBEDDED:
        raise InputPathError(f"unknown model name {name!r}: known names are {', '.join(EMBEDDED)}, or pass a folder")
    target = cache_dir() / "models" / name
    if (target / "config.json").exists() and not force:
        return target
    if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink() and _prepared_or_empty(target)):
        raise OutputExistsError(
            f"{target} is not a model layerswap prepared (no {PROVENANCE_NAME} of an embedded model), and layerswap never "
            "replaces a folder it did not create: move it away, or set LAYERSWAP_CACHE to another folder"
        )
    if not quiet:
        # on stderr: stdout carries results (``inspect --json``, ``models prepare``'s folder)
        print(f"preparing {name} into {target} (once; 1-7 minutes on 2 CPU cores)", file=sys.stderr, flush=True)
    with AtomicDir(target, overwrite=True, replace_any=True) as tmp:
        EMBEDDED[name].prepare(tmp)
        write_provenance(tmp, {"kind": "embedded model", "name": name, "package": EMBEDDED[name].package})
    return target


def _prepared_or_empty(folder: Path) -> bool:
    """An empty folder, or one :func:`prepare_model` wrote (its provenance names an embedded model)."""
    record = written_by_layerswap(folder)
    return (record is not None and record.get("kind") == "embedded model") or not any(folder.iterdir())


def resolve_model(path_or_name: str | os.PathLike[str]) -> Path:
    """A local path as it is, or an embedded short name prepared into the cache."""
    text = str(path_or_name)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if text in EMBEDDED:
        return prepare_model(text)
    raise InputPathError(
        f"{text} does not exist: pass a model folder, a PEFT adapter folder, or one of: {', '.join(EMBEDDED)}"
    )


def open_checkpoint(path_or_name: str | os.PathLike[str]) -> ModelFolder | LoraAdapter:
    """Open a model folder, a PEFT LoRA adapter folder, or a short model name (``gemma3-270m``)."""
    path = resolve_model(path_or_name)
    if is_adapter_folder(path):
        return LoraAdapter(path)
    return ModelFolder(path)


def open_model(path_or_name: str | os.PathLike[str]) -> ModelFolder:
    """Open a full model folder (an adapter here is a mistake: say so)."""
    ckpt = open_checkpoint(path_or_name)
    if isinstance(ckpt, LoraAdapter):
        raise InputPathError(f"{ckpt.path} is a LoRA adapter, not a full model: pass the base model folder here")
    return ckpt
