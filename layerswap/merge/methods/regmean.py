"""RegMean (Jin et al., ICLR 2023, arXiv 2212.09849): each linear layer the least-squares fit to every expert's outputs on its own data.

For a linear layer ``y = x W^T`` with expert ``i``'s weight ``W_i`` and the Gram matrix of its
inputs ``G_i = X_i^T X_i`` (expert ``i`` run over its own task's data, non-padding tokens), the
merge minimises ``sum_i w_i |X_i W^T - X_i W_i^T|^2``: ``W^T = (sum_i w_i G~_i)^-1 sum_i w_i G~_i W_i^T``.
As in the paper, ``G~_i = alpha G_i + (1 - alpha) diag(G_i)`` (the off-diagonal scaled by ``alpha``,
0.9 by default) regularises it toward the plain average (``alpha = 0``). Linear layers inside the
transformer layers are merged so; every other tensor (embeddings, norms, biases, the LM head) is the
weighted average. The solve is a float64 Cholesky factorisation with a ridge of 1e-6 of the mean
diagonal toward the average, so an input direction no token reaches (a singular Gram) takes the average.
mergekit has no RegMean.
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


class RegMeanParams(DataParams):
    """``alpha``: the scale of the Gram matrices' off-diagonal entries (1: exact least squares, 0: the average)."""

    alpha: float = 0.9


def regmean_merge(
    tensors: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], weights: Sequence[float], alpha: float
) -> torch.Tensor:
    """The RegMean weight (``out x in``) of a linear layer from its experts' weights and input Grams.

    Solved in float64 with a ridge of ``1e-6`` of the mean diagonal toward the weighted average: a
    relative change of about 1e-6 where every input direction was seen, the average where one was not.
    """
    import torch

    lhs = rhs = average = None
    for weight, gram, w in zip(tensors, grams, weights, strict=True):
        g = gram.to(torch.float64)
        diagonal = g.diagonal().clone()
        g.mul_(alpha * w).diagonal().copy_(diagonal.mul_(w))
        wt = weight.to(torch.float64).T  # (in, out)
        term = g @ wt
        lhs, rhs = (g, term) if lhs is None else (lhs.add_(g), rhs.add_(term))
        average = wt.mul(w) if average is None else average.add_(wt, alpha=w)
    assert lhs is not None and rhs is not None and average is not None
    ridge = 1e-6 * float(lhs.diagonal().mean().clamp(min=1e-30))
    lhs.diagonal().add_(ridge)
    rhs.add_(average, alpha=ridge)
    factor, info = torch.linalg.cholesky_ex(lhs)
    # A float32 Gram of a rank-deficient input can round to slightly indefinite: LU then.
    solved = torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.solve(lhs, rhs)
    return solved.T.to(torch.float32).contiguous()


@register
class RegMean(DataMethod):
    name = "regmean"
    summary = "each linear layer fitted to all experts' outputs on their own data from input Gram matrices (needs params.data)"
    params_model = RegMeanParams
    rank = 96

    def check(self, config: MergeSpec, params: RegMeanParams) -> None:
        super().check(config, params)
        if not (math.isfinite(params.alpha) and 0.0 <= params.alpha <= 1.0):
            raise ConfigError(
                f"params.alpha {params.alpha:g} is outside [0, 1]: it scales the Gram matrices' off-diagonal (0.9 in the paper)"
            )

    def options(self, params: RegMeanParams) -> tuple[tuple[str, Any], ...]:
        return (("alpha", params.alpha),)

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        from layerswap.merge.methods._math import blend

        tensors = list(deltas)
        readers = statistics(op.option("stats"))
        grams = [readers[label].get(name) for label, _ in op.weights]
        weights = normalised(op.weights)
        if tensors[0].dim() != 2 or any(g is None for g in grams):
            return blend(tensors, weights)
        return regmean_merge(tensors, grams, weights, op.option("alpha"))


@baseline("regmean", rank=96)
def _regmean_baseline(context: BaselineContext) -> BaselineCandidate:
    return "regmean", "regmean", {"data": context.data_for("regmean")}
