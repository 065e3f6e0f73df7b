"""Export a merge as the equivalent mergekit YAML, so users can reproduce it with ``mergekit-yaml``.

Each method writes its own mergekit config (:meth:`~layerswap.merge.methods.MergeMethod.to_mergekit`):
layer-structured plans as ``passthrough`` or ``linear`` slices, the weighted methods as the named
mergekit method with ``models`` and their parameters. Where mergekit cannot say the same thing
(DARE's ``1/density`` rescale, a non-layer policy other than ``merge`` for task-vector methods),
the YAML carries a ``# note:`` comment. This module adds the dtype and writes the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from layerswap.io import write_text_atomic
from layerswap.io.outputs import check_output_file
from layerswap.merge.config import MergeConfig
from layerswap.merge.methods import get_method
from layerswap.merge.ops import BASE, MergePlan


def to_mergekit(config: MergeConfig, plan: MergePlan, *, num_layers: int) -> tuple[dict[str, Any], list[str]]:
    """The mergekit config as a dict, plus notes on anything it cannot express exactly."""
    doc, notes = get_method(plan.method).to_mergekit(config, plan, num_layers)
    if config.dtype:
        out = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(config.dtype.lower(), config.dtype.lower())
    else:
        out = _input_dtype(config)
    if plan.is_selection or out == "float32":
        doc["dtype"] = out
    else:  # layerswap computes in float32 and casts once at the end: so does mergekit with these two keys
        doc["dtype"] = "float32"
        doc["out_dtype"] = out
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


#: How every YAML this module writes begins: ``--overwrite`` replaces only a file that starts so.
HEADER = "# mergekit equivalent of a layerswap "


def merge_inputs(config: MergeConfig) -> list[str]:
    """Every path a merge config reads: base, experts and a donor given as a folder."""
    paths = [config.base, *config.experts.values()]
    if config.donor is not None and config.donor not in config.experts and config.donor != BASE:
        paths.append(config.donor)
    return [str(p) for p in paths if p is not None]


def check_mergekit_path(
    config: MergeConfig,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    outputs: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Refuse an ``--emit-mergekit`` path that is an input, a folder, or a file layerswap did not write."""
    return check_output_file(path, [*merge_inputs(config), *inputs], overwrite=overwrite, written_marker=HEADER, outputs=outputs)


def write_mergekit_yaml(
    config: MergeConfig, plan: MergePlan, path: str | os.PathLike[str], *, num_layers: int, overwrite: bool = False
) -> Path:
    """Write the mergekit YAML (atomically: temp file renamed) and return its path."""
    path = check_mergekit_path(config, path, overwrite=overwrite)
    doc, notes = to_mergekit(config, plan, num_layers=num_layers)
    header = [f"{HEADER}{config.method} merge (mergekit-yaml THIS.yaml OUT)"]
    header += [f"# note: {n}" for n in notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked above: nothing in the way, writable
    return write_text_atomic(path, text)
