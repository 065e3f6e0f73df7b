"""Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795): drop each delta's largest and smallest entries.

Of a delta's ``n`` entries, the ``int(gamma * n)`` largest magnitudes (outliers) are dropped and,
below them, the smallest ones, so that ``int(density * n)`` remain (the outlier cut shrinks if both
cannot hold). Entries are ranked with ``torch.sort`` as mergekit ranks them, so equal magnitudes at
a cut fall the same way in both tools. ``breadcrumbs`` then sums the weighted deltas (task
arithmetic); ``breadcrumbs_ties`` elects signs and keeps the agreeing entries (TIES). Defaults
follow mergekit: no rescale, no normalize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from layerswap.errors import ConfigError
from layerswap.merge.methods._registry import MergeSpec, register
from layerswap.merge.methods._weighted import SparseParams, TaskVectorMethod, TaskVectorParams, density_baselines
from layerswap.merge.ops import Combine

if TYPE_CHECKING:
    import torch


class BreadcrumbsParams(TaskVectorParams, SparseParams):
    """Keep ``density`` of each delta: drop the top ``gamma`` share by magnitude, then the smallest."""

    density: float | dict[str, float] = 0.9
    gamma: float = Field(0.01, ge=0, lt=1)
    rescale: Literal["none", "l1"] = "none"


def breadcrumbs_trim(delta: torch.Tensor, density: float, gamma: float, rescale: str = "none") -> torch.Tensor:
    """Zero the ``int(gamma*n)`` largest and the smallest magnitudes of ``delta`` (in place), keeping ``int(density*n)``."""
    import torch

    from layerswap.merge.methods._math import rescale_l1

    if density >= 1.0:
        return delta
    n = delta.numel()
    keep_n = int(density * n)
    n_bottom = max(0, n - keep_n - int(gamma * n))
    order = torch.sort(delta.abs().reshape(-1), descending=False).indices
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[n_bottom : n_bottom + keep_n]] = True
    del order
    if rescale == "l1":
        return rescale_l1(delta, delta * mask.view(delta.shape))
    return delta.mul_(mask.view(delta.shape))


class _Breadcrumbs(TaskVectorMethod):
    params_model = BreadcrumbsParams
    sparsify = "magnitude"  # checks densities; the trim itself is :meth:`sparsifier`'s

    def check_weights(self, config: MergeSpec, params: BreadcrumbsParams, weights: dict[str, float]) -> None:
        super().check_weights(config, params, weights)
        for label, d in self.densities(config, params).items():
            if d < 1.0 and d + params.gamma > 1.0:
                raise ConfigError(
                    f"breadcrumbs gamma {params.gamma:g} + density {d:g} of {label!r} exceed 1: the outliers dropped and "
                    "the entries kept cannot both fit; lower gamma or density"
                )

    def op_fields(self, params: BreadcrumbsParams) -> dict[str, Any]:
        return {"rescale": params.rescale, "options": (("gamma", params.gamma),)}

    def sparsifier(self, op: Combine, name: str, base: torch.Tensor) -> Any:
        gamma = op.option("gamma")
        return lambda i, d: breadcrumbs_trim(d, op.densities[i], gamma, op.rescale)

    def mergekit_model_parameters(self, op: Combine, index: int) -> dict[str, Any]:
        return {"gamma": op.option("gamma")}

    def mergekit_parameters(self, op: Combine, shared: dict[str, Any]) -> list[str]:
        shared["rescale"] = op.rescale == "l1"
        return []


@register
class Breadcrumbs(_Breadcrumbs):
    name = "breadcrumbs"
    summary = "drop each delta's largest (gamma) and smallest entries, keep density, sum"
    rank = 64


@register
class BreadcrumbsTies(_Breadcrumbs):
    name = "breadcrumbs_ties"
    summary = "drop each delta's largest (gamma) and smallest entries, keep density, merge as TIES"
    rank = 65
    consensus = True


density_baselines({"breadcrumbs": 64, "breadcrumbs_ties": 65}, seeded=False)
