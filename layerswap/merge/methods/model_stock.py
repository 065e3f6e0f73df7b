"""Model Stock (Jang et al. 2024, arXiv 2403.19522): the base pulled toward the experts' average by their angle.

Per tensor (or per row with ``filter_wise``), with ``N >= 2`` experts' deltas ``tau_i``: ``cos`` is
the mean pairwise cosine between the deltas, ``t = N cos / (1 + (N - 1) cos)`` and the result is
``base + t * mean_i tau_i`` (``t * average + (1 - t) * base``); where ``1 + (N-1) cos`` is ~0 the base
is kept. Experts that agree (cos near 1) give ``t`` near 1, orthogonal ones ``t`` near 0.
This is mergekit's ``model_stock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.merge.methods._export import method_doc
from layerswap.merge.methods._registry import (
    BaselineCandidate,
    BaselineContext,
    Layout,
    MergeMethod,
    MergeSpec,
    baseline,
    register,
)
from layerswap.merge.methods._weighted import non_layer_note
from layerswap.merge.ops import Combine, MergePlan

if TYPE_CHECKING:
    import torch


class ModelStockParams(StrictModel):
    """``filter_wise``: one interpolation factor per row (output filter) instead of per tensor."""

    filter_wise: bool = False


def model_stock_merge(deltas: list[torch.Tensor], filter_wise: bool) -> torch.Tensor:
    """``t * mean_i delta_i`` with Model Stock's ``t`` from the deltas' mean pairwise cosine."""
    import torch

    shape = deltas[0].shape
    if filter_wise:
        rows = [d.reshape(1, -1) if d.dim() < 2 else d for d in deltas]
    else:
        rows = [d.reshape(-1) for d in deltas]
    norms = [torch.linalg.vector_norm(r, dim=-1) for r in rows]
    cosines = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            dot = torch.matmul(rows[i].unsqueeze(-2), rows[j].unsqueeze(-1))[..., 0, 0]  # no product tensor
            cosines.append((dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(rows)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(cos), denominator))
    mean = rows[0]
    for r in rows[1:]:
        mean.add_(r)
    return mean.div_(n).mul_(t).reshape(shape)


@register
class ModelStock(MergeMethod):
    name = "model_stock"
    summary = "the base moved toward the experts' mean by a factor from their deltas' angle (Model Stock)"
    params_model = ModelStockParams
    rank = 70
    needs_base = True

    def check(self, config: MergeSpec, params: ModelStockParams) -> None:
        if len(config.experts) < 2:
            raise ConfigError(
                f"model_stock needs at least two experts (it reads the angle between their deltas); got "
                f"{len(config.experts)}: add another expert or use task_arithmetic"
            )

    def layout(self, config: MergeSpec, params: ModelStockParams, num_layers: int) -> Layout:
        op = Combine(self.name, tuple((label, 1.0) for label in config.experts), options=(("filter_wise", params.filter_wise),))
        return Layout((op,) * num_layers, op, tuple(config.experts))

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        return model_stock_merge(list(deltas), bool(op.option("filter_wise")))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        op = plan.layer_ops[0]
        assert isinstance(op, Combine)
        doc = method_doc(
            config, "model_stock", [label for label, _ in op.weights], {"filter_wise": bool(op.option("filter_wise"))}
        )
        return doc, non_layer_note(plan)


@baseline("model_stock", rank=70)
def _model_stock_baseline(context: BaselineContext) -> BaselineCandidate:
    return "model-stock", "model_stock", {}
