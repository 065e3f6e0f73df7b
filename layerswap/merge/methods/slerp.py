"""SLERP: spherical interpolation between two experts' weights, per tensor.

With ``v0`` the first expert's tensor and ``v1`` the second's (flattened), ``cos = <v0/|v0|, v1/|v1|>``
and ``theta = acos(cos)``: the result is ``sin((1-t) theta)/sin(theta) * v0 + sin(t theta)/sin(theta) * v1``,
or ``(1-t) v0 + t v1`` where ``|cos| > 0.9995`` (nearly collinear). ``t`` is one number or a
gradient over depth (a list spread over the layers, as mergekit reads it; embeddings, norm and head
take its first value), and ``filters`` give tensors whose name contains a key their own ``t``.
No base is read. This is mergekit's ``slerp`` with the first expert as its ``base_model``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.merge.methods._depth import gradient_at, layer_positions
from layerswap.merge.methods._export import method_doc, model_path
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

Factor = float | list[float]


class SlerpParams(StrictModel):
    """``t``: 0 is the first expert, 1 the second (a list: a gradient over layers); ``filters``:
    ``{name substring: t}`` for matching tensors, the first match winning."""

    t: Factor = 0.5
    filters: dict[str, Factor] = {}


def check_unit(what: str, value: Factor) -> None:
    for v in value if isinstance(value, list) else [value]:
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{what} {v:g} is outside [0, 1]: use a value from 0 (the first expert) to 1 (the second)")
    if isinstance(value, list) and not value:
        raise ConfigError(f"{what} is an empty list: give one number or a gradient of at least one point")


def two_experts(method: str, config: MergeSpec) -> None:
    if len(config.experts) != 2:
        raise ConfigError(
            f"{method} interpolates between exactly two experts; got {len(config.experts)} "
            f"({', '.join(config.experts)}): name two, or use linear or task_arithmetic for more"
        )


def factor_for(op: Combine, name: str) -> float:
    """The op's ``t`` for tensor ``name``: the first filter whose key is in the name, else the default."""
    for key, value in op.option("filters", ()):
        if key in name:
            return value
    return op.option("t")


#: Entries per chunk of the norms and the cosine (mergekit's chunk).
_CHUNK = 1 << 20


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """SLERP of two float32 tensors over all their entries (``v0`` is overwritten).

    The norms (norms of chunk norms, as mergekit) and the cosine (chunk dot products) are summed a
    chunk at a time, with no temporary: the coefficients equal mergekit's to float rounding.
    """
    import torch

    if v0.numel() == 0:
        return v0.mul_(1 - t).add_(v1, alpha=t)
    a, b = v0.reshape(-1), v1.reshape(-1)
    na = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in a.split(_CHUNK)]))
    nb = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(y) for y in b.split(_CHUNK)]))
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    # <a, b> / (|a| |b|): chunk dot products (no temporary: dividing each chunk first, as mergekit
    # does, allocates three chunk-sized tensors per chunk, most of SLERP's time) summed in float64
    raw = sum(float(torch.dot(x, y)) for x, y in zip(a.split(_CHUNK), b.split(_CHUNK), strict=True))
    dot = min(1.0, max(-1.0, raw / (float(na) * float(nb))))
    if abs(dot) > dot_threshold:
        return v0.mul_(1 - t).add_(v1, alpha=t)
    theta = torch.acos(torch.tensor(dot, dtype=torch.float32))
    sin = torch.sin(theta)
    ca = float(torch.sin((1 - t) * theta) / sin)
    cb = float(torch.sin(t * theta) / sin)
    return v0.mul_(ca).add_(v1, alpha=cb)


@register
class Slerp(MergeMethod):
    name = "slerp"
    summary = "spherical interpolation between two experts' weights (t per layer, per tensor filter)"
    params_model = SlerpParams
    rank = 80

    def check(self, config: MergeSpec, params: SlerpParams) -> None:
        two_experts(self.name, config)
        check_unit("slerp t", params.t)
        for key, value in params.filters.items():
            check_unit(f"slerp t of filter {key!r}", value)

    def layout(self, config: MergeSpec, params: SlerpParams, num_layers: int) -> Layout:
        experts = tuple((label, 1.0) for label in config.experts)

        def op(x: float) -> Combine:
            filters = tuple((k, gradient_at(v, x)) for k, v in params.filters.items())
            return Combine(self.name, experts, from_base=False, options=(("t", gradient_at(params.t, x)), ("filters", filters)))

        return Layout(tuple(op(x) for x in layer_positions(num_layers)), op(0.0), tuple(config.experts))

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        v0, v1 = deltas
        return slerp(factor_for(op, name), v0, v1)

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        first = next(iter(config.experts))
        doc = method_doc(config, "slerp", list(config.experts), {"t": mergekit_factor(plan, "t")}, base=False)
        return {"base_model": model_path(config, first), **doc}, non_layer_note(plan)


def per_layer(plan: MergePlan, read: Callable[[Combine], float]) -> float | list[float]:
    """One number, or the per-layer values as a mergekit gradient (value ``i`` at layer ``i``)."""
    values = [read(op) for op in plan.layer_ops if isinstance(op, Combine)]
    return values[0] if len(set(values)) == 1 else values


def mergekit_factor(plan: MergePlan, key: str) -> Any:
    """``t`` as mergekit writes it: per-layer values, with ``{filter, value}`` entries for the filters."""
    first = plan.layer_ops[0]
    assert isinstance(first, Combine)
    default = per_layer(plan, lambda op: op.option(key))
    filters = [k for k, _ in first.option("filters", ())]
    if not filters:
        return default
    entries = [{"filter": k, "value": per_layer(plan, lambda op, k=k: dict(op.option("filters"))[k])} for k in filters]
    return entries + [{"value": default}]


@baseline("slerp", rank=80)
def _slerp_baseline(context: BaselineContext) -> BaselineCandidate:
    return "slerp", "slerp", {"t": 0.5}
