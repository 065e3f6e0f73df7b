"""Revert: each expert keeps its update only in its ``keep`` layers; everything else is the base.

Disjoint ``keep`` sets are a selection (bytes copied); where they overlap the deltas add
(``base + d_1 + d_2``, the task-arithmetic formula with weights 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.io import parse_layer_spec
from layerswap.merge.methods._export import model_path, slices
from layerswap.merge.methods._registry import Layout, MergeMethod, baseline, register
from layerswap.merge.ops import BASE, Combine, MergePlan, Op, Select

if TYPE_CHECKING:
    from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, MergeSpec


class RevertParams(StrictModel):
    """Each expert keeps its update only in ``keep[label]`` layers (``"0-4,16-17"`` or a list)."""

    keep: dict[str, str | list[int]]


def _keep_layers(spec: str | list[int], n: int, label: str) -> set[int]:
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= i < n]
        if bad:
            raise ConfigError(f"revert keep layer {bad[0]} of {label!r} is out of range: valid layers are 0..{n - 1}")
        return set(spec)
    return set(parse_layer_spec(spec, n))


@register
class Revert(MergeMethod):
    name = "revert"
    summary = "each expert keeps its update only in the layers it names; the rest is the base"
    params_model = RevertParams
    rank = 20
    selection = True
    needs_base = True

    def default_non_layer(self, params: Mapping[str, Any]) -> str:
        return "base"

    def check(self, config: MergeSpec, params: RevertParams) -> None:
        unknown = [k for k in params.keep if k not in config.experts]
        if unknown:
            raise ConfigError(
                f"revert keeps layers of {unknown[0]!r}, which is not an expert; experts: {', '.join(config.experts)}"
            )
        if not params.keep:
            raise ConfigError("revert needs params.keep: {EXPERT: LAYERS}, e.g. keep: {lang: '0-4,16-17'}")

    def layout(self, config: MergeSpec, params: RevertParams, num_layers: int) -> Layout:
        labels = list(config.experts)
        keep = {label: _keep_layers(spec, num_layers, label) for label, spec in params.keep.items()}
        ops: list[Op] = []
        for i in range(num_layers):
            holders = [label for label in labels if i in keep.get(label, set())]
            if not holders:
                ops.append(Select(BASE))
            elif len(holders) == 1:
                ops.append(Select(holders[0]))
            else:
                ops.append(Combine("task_arithmetic", tuple((h, 1.0) for h in holders)))
        return Layout(tuple(ops), None, tuple(labels))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        if not any(isinstance(op, Combine) for op in plan.layer_ops):
            return slices(config, plan, num_layers), []
        doc = {
            "merge_method": "task_arithmetic",
            "base_model": model_path(config, BASE),
            "models": [{"model": model_path(config, label), "parameters": {"weight": 1.0}} for label in config.experts],
        }
        return doc, ["overlapping revert layers add both deltas; exported as task_arithmetic over the whole model"]


@baseline("revert", rank=90)
def _revert_baseline(context: BaselineContext) -> BaselineCandidate:
    """The math expert's update kept in the best swap's middle block, the language expert's outside it."""
    n = context.num_layers
    lo, hi = context.middle if context.middle else (n // 4, n - n // 8 - 1)
    lang_keep = [i for i in range(n) if i < lo or i > hi]
    return f"revert-m{lo}-{hi}", "revert", {"keep": {"math": list(range(lo, hi + 1)), "lang": lang_keep}}
