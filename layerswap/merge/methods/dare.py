"""DARE: drop each delta entry with probability ``1 - density``, rescale the survivors, then merge.

``dare_linear`` sums the weighted deltas (task arithmetic); ``dare_ties`` applies TIES's sign
election and disjoint mean. Survivors are divided by ``density`` (the DARE paper and PEFT;
``rescale: l1`` restores the L1 norm as mergekit does, ``none`` keeps them as they are). Each
tensor's mask comes from its own generator seeded with ``(seed, tensor name, expert label)``, so a
merge is reproducible and independent of tensor order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from layerswap.merge.methods._registry import register
from layerswap.merge.methods._weighted import SparseParams, TaskVectorMethod, TaskVectorParams, density_baselines
from layerswap.merge.ops import Combine

if TYPE_CHECKING:
    import torch


class DareParams(TaskVectorParams, SparseParams):
    """Drop each delta entry with probability ``1 - density`` and rescale the survivors."""

    rescale: Literal["density", "l1", "none"] = "density"
    seed: int = 0


def seeded_generators(op: Combine, name: str, base: torch.Tensor) -> list[torch.Generator]:
    """One generator per expert of ``op``, seeded with ``(op.seed, tensor name, expert label)``."""
    import torch

    from layerswap.merge.methods._math import stable_seed

    generators = []
    for label, _ in op.weights:
        gen = torch.Generator(device=base.device)
        gen.manual_seed(stable_seed(op.seed, name, label))
        generators.append(gen)
    return generators


class _Dare(TaskVectorMethod):
    params_model = DareParams
    sparsify = "random"

    def op_fields(self, params: DareParams) -> dict[str, Any]:
        return {"rescale": params.rescale, "seed": params.seed}

    def generators(self, op: Combine, name: str, base: torch.Tensor) -> list[torch.Generator]:
        return seeded_generators(op, name, base)

    def mergekit_parameters(self, op: Combine, shared: dict[str, Any]) -> list[str]:
        shared["rescale"] = op.rescale != "none"
        if op.rescale != "density":
            return []
        return [
            "layerswap's DARE rescales survivors by 1/density; mergekit's rescale matches the L1 norm instead "
            "(set rescale: l1 in layerswap for the same rule); random masks differ between the tools"
        ]


@register
class DareLinear(_Dare):
    name = "dare_linear"
    summary = "drop delta entries at random (keep density), rescale, sum as task arithmetic"
    rank = 60


@register
class DareTies(_Dare):
    name = "dare_ties"
    summary = "drop delta entries at random (keep density), rescale, merge as TIES"
    rank = 61
    consensus = True


density_baselines({"dare_ties": 60, "dare_linear": 61}, seeded=True)
