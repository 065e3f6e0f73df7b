"""NuSLERP: spherical interpolation of two experts, with the base as origin when a base is given.

``t = w_2 / (w_1 + w_2)`` from the two experts' weights (each one number or a gradient over layers;
0.5 where they sum to ~0). With a base the two *deltas* are interpolated and the base added back
(``base + slerp(t, delta_1, delta_2)``); without one, the weights themselves. The angle is taken over
the whole tensor (``flatten``, the default), per row (``flatten: false``) or per column (``row_wise``),
each normalised with its norm clamped at 1e-7; nearly collinear pairs (``1 - cos^2 <= 1e-16``) are
interpolated linearly. This is mergekit's ``nuslerp``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.merge.methods._depth import gradient_at, layer_positions
from layerswap.merge.methods._export import model_path
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
from layerswap.merge.methods.slerp import Factor, per_layer, two_experts
from layerswap.merge.ops import BASE, Combine, MergePlan

if TYPE_CHECKING:
    import torch


class NuslerpParams(StrictModel):
    """``weights``: one per expert (``t = w_2/(w_1+w_2)``; a list is a gradient over layers);
    ``flatten``: one angle per tensor; ``row_wise``: per column instead of per row when not flattened."""

    weights: dict[str, Factor] | None = None
    flatten: bool = True
    row_wise: bool = False


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool, eps: float = 1e-8) -> torch.Tensor:
    """NuSLERP of two float32 tensors (a new tensor, or ``v0`` overwritten when ``flatten``)."""
    import torch

    shape = v0.shape
    if flatten:  # one angle: two norms and a dot product, then v0 * a + v1 * b in place
        n0 = float(torch.linalg.vector_norm(v0))
        n1 = float(torch.linalg.vector_norm(v1))
        cos = min(1.0, max(-1.0, float(torch.dot(v0.reshape(-1), v1.reshape(-1))) / (max(n0, 1e-7) * max(n1, 1e-7))))
        if 1 - cos * cos <= eps**2:
            return v0.mul_(1 - t).add_(v1, alpha=t)
        theta = math.acos(cos)
        return v0.mul_(math.sin((1 - t) * theta) / math.sin(theta)).add_(v1, alpha=math.sin(t * theta) / math.sin(theta))
    if row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    del u0, u1
    collinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0, cos))
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    out = torch.where(collinear, (1 - t) * v0 + t * v1, out)
    if row_wise:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@register
class Nuslerp(MergeMethod):
    name = "nuslerp"
    summary = "spherical interpolation of two experts by weight, around the base when one is given (NuSLERP)"
    params_model = NuslerpParams
    rank = 81

    def check(self, config: MergeSpec, params: NuslerpParams) -> None:
        two_experts(self.name, config)
        if params.weights is not None:
            if set(params.weights) != set(config.experts):
                raise ConfigError(f"nuslerp params.weights must give one weight per expert ({', '.join(config.experts)})")
            for label, w in params.weights.items():
                if isinstance(w, list) and not w:
                    raise ConfigError(f"nuslerp weight of {label!r} is an empty list: give a number or a gradient")

    def layout(self, config: MergeSpec, params: NuslerpParams, num_layers: int) -> Layout:
        labels = list(config.experts)
        weights = params.weights or {label: 1.0 for label in labels}

        def op(x: float) -> Combine:
            w0, w1 = (gradient_at(weights[label], x) for label in labels)
            t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
            options = (("t", t), ("flatten", params.flatten), ("row_wise", params.row_wise))
            return Combine(self.name, ((labels[0], w0), (labels[1], w1)), from_base=config.base is not None, options=options)

        return Layout(tuple(op(x) for x in layer_positions(num_layers)), op(0.0), tuple(labels))

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        v0, v1 = deltas
        return nuslerp(op.option("t"), v0, v1, flatten=op.option("flatten"), row_wise=op.option("row_wise"))

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        first = plan.layer_ops[0]
        assert isinstance(first, Combine)
        models = [
            {"model": model_path(config, label), "parameters": {"weight": per_layer(plan, lambda op, i=i: op.weights[i][1])}}
            for i, (label, _) in enumerate(first.weights)
        ]
        doc: dict[str, Any] = {"merge_method": "nuslerp"}
        if first.from_base:
            doc["base_model"] = model_path(config, BASE)
        doc["models"] = models
        doc["parameters"] = {"nuslerp_flatten": first.option("flatten"), "nuslerp_row_wise": first.option("row_wise")}
        return doc, non_layer_note(plan)


@baseline("nuslerp", rank=81)
def _nuslerp_baseline(context: BaselineContext) -> BaselineCandidate:
    return "nuslerp", "nuslerp", {"weights": {"math": 1.0, "lang": 1.0}}
