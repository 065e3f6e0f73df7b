"""Which source feeds each output tensor: one operation per transformer layer, one for the rest.

The plan is computed from the config and the layer count alone: the config's method lays out the
layers (:meth:`~layerswap.merge.methods.MergeMethod.layout`), then the non-layer policy picks the
operation for embeddings, final norm and LM head. The operations themselves are in
:mod:`layerswap.merge.ops` (re-exported here).
"""

from __future__ import annotations

from layerswap.errors import ConfigError
from layerswap.merge.config import MergeConfig
from layerswap.merge.ops import BASE, Blend, Combine, MergePlan, Op, Select

__all__ = ["BASE", "Blend", "Combine", "MergePlan", "Op", "Select", "build_plan"]


def build_plan(config: MergeConfig, num_layers: int) -> MergePlan:
    """Resolve a validated config into per-layer operations for a model of ``num_layers`` layers."""
    params = config.method_params()
    policy = config.non_layer_policy()
    layout = config.merge_method.layout(config, params, num_layers)
    non_layer: Op
    if policy == "merge":
        if layout.merge_op is None:  # the config refuses "merge" for selection methods; a new method may forget
            raise ConfigError(f"method {config.method} has no operation for non_layer merge: name an expert, base or average")
        non_layer = layout.merge_op
    elif policy == "average":
        labels = layout.average_labels
        non_layer = Blend(tuple((label, 1.0 / len(labels)) for label in labels))
    else:
        non_layer = Select(policy)
    return MergePlan(config.method, tuple(layout.layer_ops), non_layer, policy)
