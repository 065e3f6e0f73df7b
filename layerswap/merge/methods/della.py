"""DELLA (Deep, Dhar & Rakshit 2024, arXiv 2406.11617): drop delta entries with probabilities ranked by magnitude.

MAGPRUNE ranks each row's entries by magnitude (a 1-D tensor is one row) and keeps entry ``i`` with
probability ``p_i = density - epsilon + 2 * epsilon * r_i``, ``r_i`` its rank scaled to [0, 1]
(smallest 0, largest 1), so the mean keep rate is ``density`` and large entries survive more often.
Survivors are divided by their own ``p_i`` (the paper; ``rescale: l1`` restores the L1 norm as
mergekit does, ``none`` keeps them). ``della`` then elects signs and takes the disjoint mean (TIES);
``della_linear`` sums. Masks are seeded per (seed, tensor, expert), as DARE's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from layerswap.errors import ConfigError
from layerswap.merge.methods._registry import MergeSpec, register
from layerswap.merge.methods._weighted import SparseParams, TaskVectorMethod, TaskVectorParams, density_baselines
from layerswap.merge.methods.dare import seeded_generators
from layerswap.merge.ops import Combine

if TYPE_CHECKING:
    import torch


class DellaParams(TaskVectorParams, SparseParams):
    """Keep each entry with a probability ranked by magnitude, ``density +/- epsilon``; rescale survivors."""

    epsilon: float = Field(0.15, ge=0)
    rescale: Literal["probability", "l1", "none"] = "probability"
    seed: int = 0


class DellaTiesParams(DellaParams):
    """DELLA with TIES's sign election; ``normalize`` (the disjoint mean) on by default, as in mergekit."""

    normalize: bool = True


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Each entry's keep probability: ``density - epsilon + 2 epsilon * rank/(n-1)`` within its row
    (rows of a 2-D tensor; other shapes flattened to rows of their first axis, a 1-D tensor one row)."""
    import torch

    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, descending=False)
    # each entry's rank: the inverse of the sort permutation, scattered (mergekit argsorts the argsort,
    # which gives the same ranks at the cost of a second sort)
    ranks = torch.empty(rows.shape, dtype=torch.float32, device=delta.device)
    ranks.scatter_(1, order, torch.arange(n, dtype=torch.float32, device=delta.device).expand(rows.shape))
    del order
    if n > 1:
        ranks.div_(n - 1)
    return ranks.mul_(2 * epsilon).add_(density - epsilon).reshape(delta.shape)


def della_mask(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform draw per entry, kept below its probability (separate, so a test can inject a stream)."""
    import torch

    return torch.rand(probs.shape, generator=generator, device=probs.device) < probs


def della_drop(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None, rescale: str = "probability"
) -> torch.Tensor:
    """MAGPRUNE on one delta (a new tensor): keep by ranked probability, then rescale."""
    from layerswap.merge.methods._math import rescale_l1

    if density >= 1.0:
        return delta.clone()
    probs = della_probabilities(delta, density, epsilon)
    masked = delta * della_mask(probs, generator)
    if rescale == "probability":
        return masked.div_(probs)
    if rescale == "l1":
        return rescale_l1(delta, masked)
    return masked


class _Della(TaskVectorMethod):
    params_model = DellaParams
    sparsify = "random"  # checks densities; the drop itself is :meth:`sparsifier`'s

    def check_weights(self, config: MergeSpec, params: DellaParams, weights: dict[str, float]) -> None:
        super().check_weights(config, params, weights)
        for label, d in self.densities(config, params).items():
            if d < 1.0 and not (0.0 < d - params.epsilon and d + params.epsilon < 1.0):
                raise ConfigError(
                    f"della epsilon {params.epsilon:g} with density {d:g} of {label!r} gives keep probabilities outside "
                    "(0, 1): choose epsilon < min(density, 1 - density)"
                )

    def op_fields(self, params: DellaParams) -> dict[str, Any]:
        return {"rescale": params.rescale, "seed": params.seed, "options": (("epsilon", params.epsilon),)}

    def sparsifier(self, op: Combine, name: str, base: torch.Tensor) -> Any:
        generators = seeded_generators(op, name, base)
        epsilon = op.option("epsilon")
        return lambda i, d: della_drop(d, op.densities[i], epsilon, generators[i], op.rescale)

    def mergekit_model_parameters(self, op: Combine, index: int) -> dict[str, Any]:
        return {"epsilon": op.option("epsilon")}

    def mergekit_parameters(self, op: Combine, shared: dict[str, Any]) -> list[str]:
        shared["rescale"] = op.rescale != "none"
        if op.rescale != "probability":
            return []
        return [
            "layerswap's DELLA divides survivors by their keep probability (the paper); mergekit's rescale matches "
            "the L1 norm instead (set rescale: l1 in layerswap for the same rule); random masks differ between the tools"
        ]


@register
class Della(_Della):
    name = "della"
    summary = "drop delta entries with magnitude-ranked probabilities (DELLA), rescale, merge as TIES"
    rank = 62
    consensus = True
    params_model = DellaTiesParams


@register
class DellaLinear(_Della):
    name = "della_linear"
    summary = "drop delta entries with magnitude-ranked probabilities (DELLA), rescale, sum"
    rank = 63


density_baselines({"della": 62, "della_linear": 63}, seeded=True)
