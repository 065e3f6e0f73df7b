"""LiNeS (Wang et al., ICLR 2025, arXiv 2410.17146): task arithmetic with the update scaled by depth.

Layer ``l`` of ``L`` gets ``base + lambda * (alpha + beta * l/(L-1)) * sum_i w_i delta_i``: shallow layers,
which hold general features, keep little of the fine-tuning, deep layers all of it; embeddings, norm
and head take layer 0's scale. The same ``lines: {alpha, beta}`` parameter composes with every
task-vector method (``ties``, ``dare_*``, ``della*``, ``breadcrumbs*``, ``sce``): this method is the
plain one. mergekit reads it as ``task_arithmetic`` with a per-layer ``lambda`` gradient.
"""

from __future__ import annotations

from layerswap.merge.methods._depth import LinesProfile
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, baseline, register
from layerswap.merge.methods._weighted import TaskVectorMethod, TaskVectorParams


class LinesParams(TaskVectorParams):
    """Task arithmetic whose merged delta at layer ``l`` is scaled by ``alpha + beta * l/(L-1)``."""

    lines: LinesProfile = LinesProfile(alpha=0.5, beta=0.5)


@register
class Lines(TaskVectorMethod):
    name = "lines"
    summary = "task arithmetic with the update scaled by depth, alpha + beta * l/(L-1) (LiNeS)"
    params_model = LinesParams
    rank = 45
    mergekit_method = "task_arithmetic"


@baseline("lines", rank=45)
def _lines_baseline(context: BaselineContext) -> BaselineCandidate:
    return "lines-a0.5-b0.5", "lines", {"weights": {"math": 1.0, "lang": 1.0}, "lines": {"alpha": 0.5, "beta": 0.5}}
