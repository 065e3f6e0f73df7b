"""The graded swap: the layer swap's hard cut made continuous.

The outer (language) expert's weight at layer ``l`` follows a raised cosine ``width`` layers wide
centred on each cut (between layers ``bottom - 1`` and ``bottom``, and between ``n - top - 1`` and
``n - top``): 1 deep inside the bottom/top blocks, 0 deep inside the middle, in between a blend
``(1 - w) * middle + w * outer``. ``width`` 0 (or below 1) is the hard swap; layers whose weight is
exactly 0 or 1 stay byte copies. The sweep can so compare a swap with its smooth versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.io.swap_geometry import SwapGeometry
from layerswap.merge.methods._depth import graded_outer_weight
from layerswap.merge.methods._export import slices
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, Layout, MergeMethod, MergeSpec, baseline, register
from layerswap.merge.ops import Blend, MergePlan, Op, Select


class GradedSwapParams(StrictModel):
    """Outer expert's weight: 1 in the bottom ``bottom`` / top ``top`` layers, 0 in the middle, a
    raised cosine ``width`` layers wide across each cut."""

    bottom: int = Field(ge=0)
    top: int = Field(ge=0)
    width: float = Field(3.0, ge=0)
    middle: str = "math"
    outer: str = "lang"


def graded_layout(n: int, p: GradedSwapParams) -> list[Op]:
    SwapGeometry(p.bottom, p.top, 0).check(n)
    ops: list[Op] = []
    for i in range(n):
        w = graded_outer_weight(i, n, p.bottom, p.top, p.width)
        ops.append(Select(p.outer) if w == 1.0 else Select(p.middle) if w == 0.0 else Blend(((p.middle, 1.0 - w), (p.outer, w))))
    return ops


@register
class GradedSwap(MergeMethod):
    name = "graded_swap"
    summary = "the layer swap with a smooth cut: the language expert's weight a raised cosine over depth"
    params_model = GradedSwapParams
    rank = 15
    selection = True  # whole layers where the weight is 0 or 1; no non_layer merge

    def default_non_layer(self, params: Mapping[str, Any]) -> str:
        return params.get("middle", "math")

    def check(self, config: MergeSpec, params: GradedSwapParams) -> None:
        for role, label in (("middle", params.middle), ("outer", params.outer)):
            if label not in config.experts:
                raise ConfigError(
                    f"graded_swap {role} expert {label!r} is not among the experts ({', '.join(config.experts)}): "
                    f"set params.{role} to one of them"
                )
        if params.middle == params.outer:
            raise ConfigError("graded_swap needs two different experts for params.middle and params.outer")

    def layout(self, config: MergeSpec, params: GradedSwapParams, num_layers: int) -> Layout:
        return Layout(tuple(graded_layout(num_layers, params)), None, (params.middle, params.outer))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        return slices(config, plan, num_layers), []


@baseline("graded_swap", rank=15)
def _graded_swap_baseline(context: BaselineContext) -> BaselineCandidate:
    """The best swap's cut (or the revert baseline's default split), smoothed over 3 layers."""
    n = context.num_layers
    lo, hi = context.middle if context.middle else (n // 4, n - n // 8 - 1)
    return f"graded-b{lo}-u{n - 1 - hi}-w3", "graded_swap", {"bottom": lo, "top": n - 1 - hi, "width": 3.0}
