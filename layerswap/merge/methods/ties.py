"""TIES: trim each delta to its largest magnitudes, elect the sign by total mass, take the disjoint mean.

Conventions where references differ (docs/merge.md): ``k = max(1, int(density * numel))`` kept by
``torch.topk``, or above 16M entries a histogram cut in bounded memory (which of the entries tied at the
cut are kept is defined by neither tool: ``trim_magnitude``); the sign of the *weighted sum*
(``0`` counts as ``+``); the mean divides by the summed weights of the agreeing entries (mergekit;
PEFT divides by their count, the same when every weight is 1).
"""

from __future__ import annotations

from layerswap.merge.methods._registry import register
from layerswap.merge.methods._weighted import SparseParams, TaskVectorMethod, TaskVectorParams, density_baselines


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


density_baselines({"ties": 50}, seeded=False)
