"""Export a merge as the equivalent mergekit YAML, so users can reproduce it with ``mergekit-yaml``.

- Pure selections (layer swap without transitions, disjoint reverts): ``passthrough`` slices.
  mergekit takes the embeddings from the first slice's model and the final norm / LM head from the
  last slice's model, so a zero-width slice (``layer_range: [0, 0]`` / ``[N, N]``) of the
  non-layer source is added where the policy asks for another model.
- Blends (transitions, ``average``): ``linear`` slices with per-source weights.
- Linear / task arithmetic / TIES / DARE: the named method with ``models`` and their parameters.
Where mergekit cannot say the same thing (DARE's ``1/density`` rescale, a non-layer policy other
than ``merge`` for task-vector methods), the YAML carries a ``# note:`` comment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from layerswap.errors import ConfigError
from layerswap.merge.config import MergeConfig
from layerswap.merge.plan import BASE, Blend, Combine, MergePlan, Op, Select


def _path(config: MergeConfig, label: str) -> str:
    """A model reference; a LoRA expert is written ``BASE+ADAPTER`` (mergekit's LoRA syntax)."""
    from layerswap.checkpoint import is_adapter_folder
    from layerswap.models import resolve_model

    if label == BASE:
        if config.base is None:
            raise ConfigError("the mergekit export needs the base path: add base: PATH")
        return str(resolve_model(config.base).resolve())
    path = str(resolve_model(config.experts[label]).resolve())
    if is_adapter_folder(path):
        return f"{_path(config, BASE)}+{path}"
    return path


def _runs(plan: MergePlan) -> list[tuple[int, int, Op]]:
    runs: list[tuple[int, int, Op]] = []
    for i, op in enumerate(plan.layer_ops):
        if runs and runs[-1][2] == op:
            runs[-1] = (runs[-1][0], i + 1, op)
        else:
            runs.append((i, i + 1, op))
    return runs


def _slice(config: MergeConfig, lo: int, hi: int, op: Op, weighted: bool = False) -> dict[str, Any]:
    if isinstance(op, Select):
        source: dict[str, Any] = {"model": _path(config, op.source), "layer_range": [lo, hi]}
        if weighted:
            source["parameters"] = {"weight": 1.0}
        return {"sources": [source]}
    if isinstance(op, Blend):
        return {
            "sources": [
                {"model": _path(config, label), "layer_range": [lo, hi], "parameters": {"weight": w}}
                for label, w in op.weights
            ]
        }
    raise ConfigError(f"{op.describe()} has no mergekit slice form")


def to_mergekit(config: MergeConfig, plan: MergePlan, *, num_layers: int) -> tuple[dict[str, Any], list[str]]:
    """The mergekit config as a dict, plus notes on anything it cannot express exactly."""
    notes: list[str] = []
    doc: dict[str, Any] = {}
    layer_structured = plan.method in ("layer_swap", "revert")
    if layer_structured:
        if any(isinstance(op, Combine) for op in plan.layer_ops):
            notes.append("overlapping revert layers add both deltas; exported as task_arithmetic over the whole model")
            labels = list(config.experts)
            doc = {
                "merge_method": "task_arithmetic",
                "base_model": _path(config, BASE),
                "models": [{"model": _path(config, label), "parameters": {"weight": 1.0}} for label in labels],
            }
        else:
            selection = plan.is_selection
            doc["merge_method"] = "passthrough" if selection else "linear"
            slices = [_slice(config, lo, hi, op, not selection) for lo, hi, op in _runs(plan)]
            nl = plan.non_layer_op
            first, last = plan.layer_ops[0], plan.layer_ops[-1]
            if nl != first:
                slices.insert(0, _slice(config, 0, 0, nl, not selection))
            if nl != last:
                slices.append(_slice(config, num_layers, num_layers, nl, not selection))
            doc["slices"] = slices
            if not selection:
                doc["parameters"] = {"normalize": False}
    else:
        op = plan.layer_ops[0]
        if isinstance(op, Blend):
            doc = {
                "merge_method": "linear",
                "models": [{"model": _path(config, label), "parameters": {"weight": w}} for label, w in op.weights],
                "parameters": {"normalize": False},
            }
        else:
            assert isinstance(op, Combine)
            models = []
            for i, (label, w) in enumerate(op.weights):
                params: dict[str, Any] = {"weight": w}
                if op.densities:
                    params["density"] = op.densities[i]
                models.append({"model": _path(config, label), "parameters": params})
            shared: dict[str, Any] = {"normalize": op.normalize, "lambda": op.lam}
            if op.sparsify == "random":
                shared["rescale"] = op.rescale != "none"
                if op.rescale == "density":
                    notes.append(
                        "layerswap's DARE rescales survivors by 1/density; mergekit's rescale matches the L1 norm instead "
                        "(set rescale: l1 in layerswap for the same rule); random masks differ between the tools"
                    )
            doc = {"merge_method": op.method, "base_model": _path(config, BASE), "models": models, "parameters": shared}
        if plan.non_layer_policy != "merge":
            notes.append(
                f"non_layer {plan.non_layer_policy} is not expressible here: mergekit merges embeddings, norm and LM head "
                "with the same method"
            )
    if config.dtype:
        doc["dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(config.dtype.lower(), config.dtype.lower())
    else:
        doc["dtype"] = _input_dtype(config)
    return doc, notes


def _input_dtype(config: MergeConfig) -> str:
    from layerswap.checkpoint import ModelFolder, open_checkpoint

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
