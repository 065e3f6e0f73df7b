"""SCE (Wan et al. 2024, arXiv 2408.07990): select, calculate, erase.

Per tensor, over the experts' deltas ``tau_i``: **select** the ``int(select_topk * m)`` entries with
the largest variance across experts (``m`` the entries of non-zero variance; the rest zeroed in every
delta); **calculate** each expert's weight as its mean squared (selected) delta over their sum (equal
weights where all are ~0); **erase** the entries whose sign disagrees with the sign of the summed
deltas (``0`` counts as ``+``); the result is ``base + lambda * sum_i w_i tau_i m_i / max(sum_i w_i m_i,
1e-6)``. This is mergekit's ``sce``; ``lambda`` (default 1, and LiNeS) is layerswap's addition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from layerswap.config import StrictModel
from layerswap.merge.methods._depth import LinesProfile
from layerswap.merge.methods._export import method_doc
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, MergeSpec, baseline, register
from layerswap.merge.methods._weighted import TaskVectorMethod, layer_lambdas, non_layer_note
from layerswap.merge.ops import Combine, MergePlan

if TYPE_CHECKING:
    import torch


class SceParams(StrictModel):
    """``select_topk``: the share of entries kept by cross-expert variance (1: all)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())
    select_topk: float = Field(1.0, gt=0, le=1)
    lambda_: float = Field(1.0, alias="lambda")
    lines: LinesProfile | None = None


def sce_merge(taus: list[torch.Tensor], select_topk: float) -> torch.Tensor:
    """SCE's merged task vector of one tensor (``taus`` are overwritten)."""
    import torch

    if select_topk < 1:
        var = torch.var(torch.stack(taus), dim=0, unbiased=False)
        k = int(torch.count_nonzero(var).item() * select_topk)
        mask = torch.zeros(var.numel(), dtype=torch.bool, device=var.device)
        if k > 0:
            mask[torch.topk(var.abs().reshape(-1), k=k, largest=True).indices] = True
        del var
        for t in taus:
            t.mul_(mask.view(t.shape))
        del mask
    energy = torch.stack([t.square().mean() for t in taus])
    total = energy.sum().item()
    weights = (torch.ones_like(energy) / len(taus) if abs(total) < 1e-6 else energy / total).tolist()
    total_sum = taus[0].clone()
    for t in taus[1:]:
        total_sum.add_(t)
    positive = total_sum >= 0
    del total_sum
    merged = torch.zeros_like(taus[0])
    divisor = torch.zeros_like(taus[0])
    for t, w in zip(taus, weights, strict=True):
        # mergekit's mask is sign(tau) == elected sign: zero entries never agree
        agree = torch.where(positive, t > 0, t < 0)
        merged.add_(t.mul_(agree), alpha=w)
        divisor.add_(agree, alpha=w)
    return merged.div_(divisor.clamp_(min=1e-6))


@register
class Sce(TaskVectorMethod):
    name = "sce"
    summary = "select high-variance entries, weight experts by delta energy, erase minority signs (SCE)"
    params_model = SceParams
    rank = 66

    def check(self, config: MergeSpec, params: SceParams) -> None:
        if params.lines is not None:
            params.lines.check()

    def base_op(self, config: MergeSpec, params: SceParams) -> Combine:
        experts = tuple((label, 1.0) for label in config.experts)  # SCE computes its own weights
        return Combine(self.name, experts, lam=params.lambda_, options=(("select_topk", params.select_topk),))

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        merged = sce_merge(list(deltas), op.option("select_topk"))
        return merged.mul_(op.lam) if op.lam != 1.0 else merged

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        op = plan.layer_ops[0]
        assert isinstance(op, Combine)
        doc = method_doc(config, "sce", [label for label, _ in op.weights], {"select_topk": op.option("select_topk")})
        notes = non_layer_note(plan)
        if layer_lambdas(plan) != 1.0:
            notes.append("mergekit's sce has no lambda: its output is the unscaled merge (lambda 1, no LiNeS)")
        return doc, notes


@baseline("sce", rank=66)
def _sce_baseline(context: BaselineContext) -> BaselineCandidate:
    return "sce", "sce", {"select_topk": 1.0}
