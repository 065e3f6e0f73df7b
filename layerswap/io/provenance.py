"""How an output folder was made: its provenance JSON, and the files it takes from a donor model."""

from __future__ import annotations

import json
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from layerswap.io.reader import load_json

PROVENANCE_NAME = "layerswap.json"
#: Config and tokenizer files an output model takes from its donor (the base model).
DONOR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
ADAPTER_DONOR_FILES = ("adapter_config.json",) + DONOR_FILES[2:]


@lru_cache(maxsize=1)
def package_version() -> str:
    """The installed layerswap version (from its metadata: the core never imports the package root)."""
    from importlib import metadata  # ~20 ms: only when an output is written

    try:
        return metadata.version("layerswap")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write_provenance(folder: Path, provenance: Mapping[str, Any]) -> None:
    """Write ``layerswap.json``: the version, the time, and ``provenance`` (inputs, method, parameters)."""
    record = {"layerswap_version": package_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record.update(provenance)
    (folder / PROVENANCE_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def read_provenance(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance of a folder layerswap wrote, or None."""
    path = Path(folder) / PROVENANCE_NAME
    return load_json(path, "") if path.exists() else None


def copy_donor_files(donor: Path, dest: Path, files: Sequence[str] = DONOR_FILES) -> list[str]:
    """Copy the donor's config and tokenizer files that exist; return the names copied."""
    copied = []
    for name in files:
        src = Path(donor) / name
        if src.exists():
            shutil.copy2(src, dest / name)
            copied.append(name)
    return copied
