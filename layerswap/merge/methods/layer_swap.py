"""Layer swap: the ``middle`` expert inside, the ``outer`` expert's bottom and top blocks around it.

Without transitions every tensor is a selection, so the merge copies bytes; ``transition`` layers on
each inner boundary blend the two experts (``k/(T+1)`` of the middle expert at distance ``k``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.io.swap_geometry import SwapGeometry
from layerswap.merge.methods._export import slices
from layerswap.merge.methods._registry import Layout, MergeMethod, MergeSpec, register
from layerswap.merge.ops import Blend, MergePlan, Op, Select


class LayerSwapParams(StrictModel):
    """Middle layers from ``middle``; bottom ``bottom`` and top ``top`` layers from ``outer``;
    ``transition`` blended layers on each inner boundary."""

    bottom: int = Field(ge=0)
    top: int = Field(ge=0)
    transition: int = Field(0, ge=0)
    transition_weights: Literal["linear", "average"] = "linear"
    middle: str = "math"
    outer: str = "lang"


def swap_layout(n: int, p: LayerSwapParams) -> list[Op]:
    """Layer swap: outer expert in the bottom/top blocks, middle expert inside, blends between."""
    geometry = SwapGeometry(p.bottom, p.top, p.transition)
    geometry.check(n)
    ops: list[Op] = []
    for i in range(n):
        if i < p.bottom or i >= n - p.top:
            ops.append(Select(p.outer))
        elif k := geometry.transition_step(n, i):  # distance 1..T from the outer block
            w = 0.5 if p.transition_weights == "average" else k / (p.transition + 1)
            ops.append(Blend(((p.middle, w), (p.outer, 1.0 - w))))
        else:
            ops.append(Select(p.middle))
    return ops


@register
class LayerSwap(MergeMethod):
    name = "layer_swap"
    summary = "the math expert with its bottom/top layers from the language expert (bytes copied)"
    params_model = LayerSwapParams
    rank = 10
    selection = True

    def default_non_layer(self, params: Mapping[str, Any]) -> str:
        return params.get("middle", "math")

    def check(self, config: MergeSpec, params: LayerSwapParams) -> None:
        for role, label in (("middle", params.middle), ("outer", params.outer)):
            if label not in config.experts:
                raise ConfigError(
                    f"{self.name} {role} expert {label!r} is not among the experts ({', '.join(config.experts)}): "
                    f"set params.{role} to one of them"
                )
        if params.middle == params.outer:
            raise ConfigError(f"{self.name} needs two different experts for params.middle and params.outer")

    def layout(self, config: MergeSpec, params: LayerSwapParams, num_layers: int) -> Layout:
        return Layout(tuple(swap_layout(num_layers, params)), None, (params.middle, params.outer))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        return slices(config, plan, num_layers), []
