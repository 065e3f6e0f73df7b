"""Linear souping: ``sum_i w_i * theta_i``, weights summing to 1 (or ``normalize`` divides by their sum)."""

from __future__ import annotations

from typing import Any

from layerswap.errors import ConfigError
from layerswap.merge.methods._export import model_path
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, Layout, MergeSpec, baseline, register
from layerswap.merge.methods._weighted import WeightedMethod, WeightedParams, non_layer_note
from layerswap.merge.ops import Blend, MergePlan


class LinearParams(WeightedParams):
    """``sum_i w_i * theta_i``; weights must sum to 1 unless ``normalize`` divides by their sum."""

    normalize: bool = False


@register
class Linear(WeightedMethod):
    name = "linear"
    summary = "model souping: the weighted average of the experts' weights (no base needed)"
    params_model = LinearParams
    rank = 30

    def default_weight(self, n: int) -> float:
        return 1.0 / n

    def check_weights(self, config: MergeSpec, params: LinearParams, weights: dict[str, float]) -> None:
        total = sum(weights.values())
        if not params.normalize and abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"linear weights sum to {total:g}, not 1: fix them or set params.normalize: true to divide by their sum"
            )
        super().check_weights(config, params, weights)

    def layout(self, config: MergeSpec, params: LinearParams, num_layers: int) -> Layout:
        weights = self.weights(config, params)
        total = sum(weights.values()) if params.normalize else 1.0
        op = Blend(tuple((k, w / total) for k, w in weights.items()))
        return Layout((op,) * num_layers, op, tuple(config.experts))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        op = plan.layer_ops[0]
        assert isinstance(op, Blend)
        doc = {
            "merge_method": "linear",
            "models": [{"model": model_path(config, label), "parameters": {"weight": w}} for label, w in op.weights],
            "parameters": {"normalize": False},
        }
        return doc, non_layer_note(plan)


@baseline("linear", rank=30)
def _soup_baseline(context: BaselineContext) -> BaselineCandidate:
    return "soup", "linear", {"weights": {"math": 0.5, "lang": 0.5}}
