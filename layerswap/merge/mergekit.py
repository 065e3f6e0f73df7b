"""Export a merge as the equivalent mergekit YAML, so users can reproduce it with ``mergekit-yaml``.

Each method writes its own mergekit config (:meth:`~layerswap.merge.methods.MergeMethod.to_mergekit`):
layer-structured plans as ``passthrough`` or ``linear`` slices, the weighted methods as the named
mergekit method with ``models`` and their parameters. Where mergekit cannot say the same thing
(DARE's ``1/density`` rescale, a non-layer policy other than ``merge`` for task-vector methods),
the YAML carries a ``# note:`` comment. This module adds the dtype and writes the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from layerswap.merge.config import MergeConfig
from layerswap.merge.methods import get_method
from layerswap.merge.ops import MergePlan


def to_mergekit(config: MergeConfig, plan: MergePlan, *, num_layers: int) -> tuple[dict[str, Any], list[str]]:
    """The mergekit config as a dict, plus notes on anything it cannot express exactly."""
    doc, notes = get_method(plan.method).to_mergekit(config, plan, num_layers)
    if config.dtype:
        doc["dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(config.dtype.lower(), config.dtype.lower())
    else:
        doc["dtype"] = _input_dtype(config)
    return doc, notes


def _input_dtype(config: MergeConfig) -> str:
    from layerswap.io import ModelFolder, open_checkpoint

    for path in [config.base, *config.experts.values()]:
        if path is None:
            continue
        ckpt = open_checkpoint(path)
        if isinstance(ckpt, ModelFolder):
            counts = ckpt.dtypes()
            code = max(counts, key=counts.get)
            return {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(code, "float32")
    return "float32"


def write_mergekit_yaml(config: MergeConfig, plan: MergePlan, path: str | os.PathLike[str], *, num_layers: int) -> Path:
    """Write the mergekit YAML (atomically: temp file renamed) and return its path."""
    doc, notes = to_mergekit(config, plan, num_layers=num_layers)
    header = [f"# mergekit equivalent of a layerswap {config.method} merge (mergekit-yaml THIS.yaml OUT)"]
    header += [f"# note: {n}" for n in notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
