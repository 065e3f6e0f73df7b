"""The graded swap: the layer swap's hard cut made continuous.

The outer (language) expert's weight at layer ``l`` follows a raised cosine ``width`` layers wide
centred on each cut (between layers ``bottom - 1`` and ``bottom``, and between ``n - top - 1`` and
``n - top``): 1 deep inside the bottom/top blocks, 0 deep inside the middle, in between a blend
``(1 - w) * middle + w * outer``. ``width`` 0 (or below 1) is the hard swap; layers whose weight is
exactly 0 or 1 stay byte copies. The sweep can so compare a swap with its smooth versions.
"""

from __future__ import annotations

from pydantic import Field

from layerswap.config import StrictModel
from layerswap.io.swap_geometry import SwapGeometry
from layerswap.merge.methods._depth import graded_outer_weight
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, Layout, MergeSpec, baseline, register
from layerswap.merge.methods.layer_swap import LayerSwap
from layerswap.merge.ops import Blend, Op, Select


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
class GradedSwap(LayerSwap):
    """The layer swap's experts checks, non-layer default and mergekit slices; its own layout."""

    name = "graded_swap"
    summary = "the layer swap with a smooth cut: the language expert's weight a raised cosine over depth"
    params_model = GradedSwapParams  # type: ignore[assignment]
    rank = 15

    def layout(self, config: MergeSpec, params: GradedSwapParams, num_layers: int) -> Layout:  # type: ignore[override]
        return Layout(tuple(graded_layout(num_layers, params)), None, (params.middle, params.outer))


@baseline("graded_swap", rank=15)
def _graded_swap_baseline(context: BaselineContext) -> BaselineCandidate:
    """The best swap's cut (or the revert baseline's default split), smoothed over 3 layers."""
    n = context.num_layers
    lo, hi = context.middle if context.middle else (n // 4, n - n // 8 - 1)
    return f"graded-b{lo}-u{n - 1 - hi}-w3", "graded_swap", {"bottom": lo, "top": n - 1 - hi, "width": 3.0}
