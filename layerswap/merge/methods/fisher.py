"""Fisher merging (Matena & Raffel 2022, arXiv 2111.09832): each weight averaged with each expert's diagonal Fisher as its weight.

With ``F_i`` expert ``i``'s diagonal Fisher (the mean squared gradient of the language-modelling
loss of expert ``i`` itself on its own task's data, as ``analyze importance`` computes it for the
base) and ``w_i`` the expert's weight: ``theta = sum_i w_i F_i theta_i / sum_i w_i F_i``, entry by
entry, with ``F_i`` floored at ``floor`` so that a weight no example moves is averaged instead of
divided by zero. Equal Fishers give the weighted average. A tensor without a gradient (not a
parameter of the loaded model) is averaged. mergekit has no Fisher merge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from layerswap.errors import ConfigError
from layerswap.merge.methods._data import DataMethod, DataParams, normalised, statistics
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, MergeSpec, baseline, register
from layerswap.merge.ops import Combine

if TYPE_CHECKING:
    import torch


class FisherParams(DataParams):
    """``floor``: the smallest Fisher value an entry counts with (keeps ``sum_i F_i`` above 0)."""

    floor: float = 1e-6


def fisher_merge(
    tensors: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], weights: Sequence[float], floor: float
) -> torch.Tensor:
    """``sum_i w_i F_i theta_i / sum_i w_i F_i`` with ``F_i`` floored (``tensors`` and ``fishers`` are overwritten)."""
    num, den = None, None
    for theta, fisher, w in zip(tensors, fishers, weights, strict=True):
        f = fisher.clamp_(min=floor).mul_(w)
        if num is None:
            num, den = theta.mul_(f), f
        else:
            num.addcmul_(theta, f)
            den.add_(f)
    assert num is not None and den is not None
    return num.div_(den)


@register
class Fisher(DataMethod):
    name = "fisher"
    summary = "each weight averaged with each expert's diagonal Fisher on its own data as its weight (needs params.data)"
    params_model = FisherParams
    rank = 95

    def check(self, config: MergeSpec, params: FisherParams) -> None:
        super().check(config, params)
        if not (math.isfinite(params.floor) and params.floor > 0):
            raise ConfigError(
                f"params.floor {params.floor:g} must be a positive number (it keeps the Fisher sum above 0), e.g. 1e-6"
            )

    def options(self, params: FisherParams) -> tuple[tuple[str, Any], ...]:
        return (("floor", params.floor),)

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        from layerswap.merge.methods._math import blend

        tensors = list(deltas)
        readers = statistics(op.option("stats"))
        fishers = [readers[label].get(name) for label, _ in op.weights]
        weights = normalised(op.weights)
        if any(f is None for f in fishers):
            return blend(tensors, weights)
        return fisher_merge(
            tensors, [f.reshape(t.shape) for f, t in zip(fishers, tensors, strict=True)], weights, op.option("floor")
        )


@baseline("fisher", rank=95)
def _fisher_baseline(context: BaselineContext) -> BaselineCandidate:
    return "fisher", "fisher", {"data": context.data_for("fisher")}
