"""TIES: trim each delta to its largest magnitudes, elect the sign by total mass, take the disjoint mean.

Conventions where references differ (docs/merge.md): ``k = max(1, int(density * numel))`` kept by
``torch.topk`` (ties at the cut broken as mergekit's sort does); the sign of the *weighted sum*
(``0`` counts as ``+``); the mean divides by the summed weights of the agreeing entries (mergekit;
PEFT divides by their count, the same when every weight is 1).
"""

from __future__ import annotations

from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, baseline, register
from layerswap.merge.methods._weighted import SparseParams, TaskVectorMethod, TaskVectorParams


class TiesParams(TaskVectorParams, SparseParams):
    """Trim each delta to ``density`` by magnitude, elect the sign by total mass, disjoint mean."""

    density: float | dict[str, float] = 0.2
    normalize: bool = True


@register
class Ties(TaskVectorMethod):
    name = "ties"
    summary = "trim each delta to its top-density magnitudes, elect signs, average the agreeing entries"
    params_model = TiesParams
    rank = 50
    sparsify = "magnitude"
    consensus = True


@baseline("ties", rank=50)
def _ties_baseline(context: BaselineContext) -> BaselineCandidate:
    density = context.density_for("ties")
    return f"ties-d{density:g}", "ties", {"density": density}
