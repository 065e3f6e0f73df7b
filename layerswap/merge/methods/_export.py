"""Pieces of the mergekit export that several methods share: model references and layer slices.

- Pure selections (layer swap without transitions, disjoint reverts): ``passthrough`` slices.
  mergekit takes the embeddings from the first slice's model and the final norm / LM head from the
  last slice's model, so a zero-width slice (``layer_range: [0, 0]`` / ``[N, N]``) of the
  non-layer source is added where the policy asks for another model.
- Blends (transitions, ``average``): ``linear`` slices with per-source weights.
"""

from __future__ import annotations

from typing import Any

from layerswap.errors import ConfigError
from layerswap.merge.methods._registry import MergeSpec
from layerswap.merge.ops import BASE, Blend, MergePlan, Op, Select


def model_path(config: MergeSpec, label: str) -> str:
    """A model reference; a LoRA expert is written ``BASE+ADAPTER`` (mergekit's LoRA syntax)."""
    from layerswap.io import is_adapter_folder, resolve_model

    if label == BASE:
        if config.base is None:
            raise ConfigError("the mergekit export needs the base path: add base: PATH")
        return str(resolve_model(config.base).resolve())
    path = str(resolve_model(config.experts[label]).resolve())
    if is_adapter_folder(path):
        return f"{model_path(config, BASE)}+{path}"
    return path


def method_doc(
    config: MergeSpec, method: str, labels: list[str], parameters: dict[str, Any], *, base: bool = True
) -> dict[str, Any]:
    """A named mergekit method over ``labels`` (no per-model parameters), with the base if ``base``."""
    doc: dict[str, Any] = {"merge_method": method}
    if base:
        doc["base_model"] = model_path(config, BASE)
    doc["models"] = [{"model": model_path(config, label)} for label in labels]
    doc["parameters"] = parameters
    return doc


def _runs(plan: MergePlan) -> list[tuple[int, int, Op]]:
    runs: list[tuple[int, int, Op]] = []
    for i, op in enumerate(plan.layer_ops):
        if runs and runs[-1][2] == op:
            runs[-1] = (runs[-1][0], i + 1, op)
        else:
            runs.append((i, i + 1, op))
    return runs


def _slice(config: MergeSpec, lo: int, hi: int, op: Op, weighted: bool = False) -> dict[str, Any]:
    if isinstance(op, Select):
        source: dict[str, Any] = {"model": model_path(config, op.source), "layer_range": [lo, hi]}
        if weighted:
            source["parameters"] = {"weight": 1.0}
        return {"sources": [source]}
    if isinstance(op, Blend):
        return {
            "sources": [
                {"model": model_path(config, label), "layer_range": [lo, hi], "parameters": {"weight": w}}
                for label, w in op.weights
            ]
        }
    raise ConfigError(f"{op.describe()} has no mergekit slice form")


def slices(config: MergeSpec, plan: MergePlan, num_layers: int) -> dict[str, Any]:
    """A layer-by-layer plan as ``passthrough`` slices (pure selection) or ``linear`` slices (blends)."""
    selection = plan.is_selection
    doc: dict[str, Any] = {"merge_method": "passthrough" if selection else "linear"}
    out = [_slice(config, lo, hi, op, not selection) for lo, hi, op in _runs(plan)]
    nl = plan.non_layer_op
    first, last = plan.layer_ops[0], plan.layer_ops[-1]
    if nl != first:
        out.insert(0, _slice(config, 0, 0, nl, not selection))
    if nl != last:
        out.append(_slice(config, num_layers, num_layers, nl, not selection))
    doc["slices"] = out
    if not selection:
        doc["parameters"] = {"normalize": False}
    return doc
