"""The weighted family's shared parts: per-expert weights, and task vectors ``expert - base``.

:class:`WeightedMethod` (linear souping and every task-vector method) checks and resolves the
weights; :class:`TaskVectorMethod` plans one :class:`~layerswap.merge.ops.Combine` for every
tensor and merges with :func:`~layerswap.merge.methods._math.combine_deltas`, its subclasses
choosing only the sparsification (none, TIES trim, DARE drop) and whether signs are elected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.merge.methods._depth import LinesProfile
from layerswap.merge.methods._export import model_path
from layerswap.merge.methods._registry import BaselineCandidate, BaselineContext, Layout, MergeMethod, MergeSpec, baseline
from layerswap.merge.ops import BASE, Combine, MergePlan

if TYPE_CHECKING:
    import torch


class WeightedParams(StrictModel):
    """Base of the weighted methods' params: ``weights`` per expert label (default: the method's)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())
    weights: dict[str, float] | None = None


class TaskVectorParams(WeightedParams):
    """Base of the task-vector methods' params: ``lambda`` scales the merged delta; ``normalize``
    divides by the summed weights (of the agreeing entries under sign election); ``lines``
    (``{alpha, beta}``) scales layer ``l``'s merged delta by ``alpha + beta * l/(L-1)`` (LiNeS)."""

    lambda_: float = Field(1.0, alias="lambda")
    normalize: bool = False
    lines: LinesProfile | None = None


class SparseParams(WeightedParams):
    """Base of the sparsifying methods' params: ``density``, the share of each delta kept (one float
    or ``{label: float}``). Listed before a :class:`TaskVectorParams` base (``class P(TaskVectorParams,
    SparseParams)``), so ``density`` comes right after ``weights`` in the valid-parameter list."""

    density: float | dict[str, float] = 0.5


def non_layer_note(plan: MergePlan) -> list[str]:
    if plan.non_layer_policy == "merge":
        return []
    return [
        f"non_layer {plan.non_layer_policy} is not expressible here: mergekit merges embeddings, norm and LM head "
        "with the same method"
    ]


def density_baselines(methods: dict[str, int], *, seeded: bool) -> None:
    """Register the sweep baseline ``{method}`` at ``rank`` for each sparsifying method: its density from the
    sweep (or its params default), with the sweep's seed where the drop is random."""
    for method, rank in methods.items():
        baseline(method, rank=rank)(partial(_density_candidate, method, seeded))


def _density_candidate(method: str, seeded: bool, context: BaselineContext) -> BaselineCandidate:
    density = context.density_for(method)
    params: dict[str, Any] = {"density": density, "seed": context.seed} if seeded else {"density": density}
    return f"{method.replace('_', '-')}-d{density:g}", method, params


def layer_lambdas(plan: MergePlan) -> float | list[float]:
    """mergekit's ``lambda``: one number, or LiNeS's per-layer values as a gradient (mergekit reads
    value ``i`` at layer ``i`` of ``N`` and the first at embeddings, norm and head, as the plan does)."""
    lams = [op.lam for op in plan.layer_ops if isinstance(op, Combine)]
    return lams[0] if len(set(lams)) == 1 else lams


class WeightedMethod(MergeMethod):
    """A method over all experts with one weight each (given, or :meth:`default_weight`)."""

    def default_weight(self, n: int) -> float:
        return 1.0

    def weights(self, config: MergeSpec, params: Any) -> dict[str, float]:
        """Per-expert weights in the order of the config's experts."""
        if params.weights is not None:
            return {k: float(params.weights[k]) for k in config.experts}
        w = self.default_weight(len(config.experts))
        return {k: w for k in config.experts}

    def check(self, config: MergeSpec, params: Any) -> None:
        labels = list(config.experts)
        if params.weights is not None:
            unknown = [k for k in params.weights if k not in config.experts]
            missing = [k for k in config.experts if k not in params.weights]
            if unknown or missing:
                raise ConfigError(
                    f"params.weights must give one weight per expert ({', '.join(labels)}); "
                    + (f"{unknown[0]!r} is not an expert" if unknown else f"{missing[0]!r} has none")
                )
        weights = self.weights(config, params)
        if not all(math.isfinite(w) for w in weights.values()):
            raise ConfigError("params.weights must be finite numbers")
        self.check_weights(config, params, weights)

    def check_weights(self, config: MergeSpec, params: Any, weights: dict[str, float]) -> None:
        if params.normalize and abs(sum(weights.values())) < 1e-8:
            raise ConfigError("params.weights sum to 0, so normalize cannot divide by them: change the weights")


class TaskVectorMethod(WeightedMethod):
    """``base + lambda * merge_i(w_i * sparsify(delta_i))``: task arithmetic, TIES, DARE."""

    needs_base = True
    #: ``None``, ``"magnitude"`` (TIES trim) or ``"random"`` (DARE drop).
    sparsify: ClassVar[str | None] = None
    #: TIES sign election and disjoint mean.
    consensus: ClassVar[bool] = False
    #: mergekit's name for the method where it differs (``lines`` is mergekit's task arithmetic).
    mergekit_method: ClassVar[str | None] = None

    def densities(self, config: MergeSpec, params: Any) -> dict[str, float]:
        """Per-expert densities (``params.density``: one float or ``{label: float}``)."""
        if isinstance(params.density, Mapping):
            missing = [k for k in config.experts if k not in params.density]
            if missing:
                raise ConfigError(f"params.density gives no density for expert {missing[0]!r}")
            return {k: float(params.density[k]) for k in config.experts}
        return {k: float(params.density) for k in config.experts}

    def check_weights(self, config: MergeSpec, params: Any, weights: dict[str, float]) -> None:
        super().check_weights(config, params, weights)
        if self.consensus and params.normalize and any(w <= 0 for w in weights.values()):
            raise ConfigError(f"{self.name} with normalize needs positive weights: the disjoint mean divides by them")
        if self.sparsify is not None:
            for label, d in self.densities(config, params).items():
                if not 0.0 < d <= 1.0:
                    raise ConfigError(f"density {d:g} of {label!r} is out of range: use a value in (0, 1]")
        if params.lines is not None:
            params.lines.check()

    def op_fields(self, params: Any) -> dict[str, Any]:
        """Extra :class:`Combine` fields the formula reads (DARE: ``rescale``, ``seed``; ``options``)."""
        return {}

    def base_op(self, config: MergeSpec, params: Any) -> Combine:
        """The operation of every layer before LiNeS scales its ``lam``."""
        weights = self.weights(config, params)
        dens = self.densities(config, params) if self.sparsify is not None else {}
        return Combine(
            self.name,
            tuple(weights.items()),
            densities=tuple(dens[k] for k in weights) if dens else (),
            lam=params.lambda_,
            normalize=params.normalize,
            **self.op_fields(params),
        )

    def layout(self, config: MergeSpec, params: Any, num_layers: int) -> Layout:
        op = self.base_op(config, params)
        if params.lines is None:
            return Layout((op,) * num_layers, op, tuple(config.experts))
        # LiNeS: each layer's own lambda; embeddings, norm and head take layer 0's (the shallowest).
        ops = tuple(replace(op, lam=op.lam * params.lines.scale(i, num_layers)) for i in range(num_layers))
        return Layout(ops, replace(op, lam=op.lam * params.lines.scale(0, num_layers)), tuple(config.experts))

    def generators(self, op: Combine, name: str, base: torch.Tensor) -> list[torch.Generator] | None:
        """Random generators per expert, for random sparsification (DARE, DELLA)."""
        return None

    def sparsifier(self, op: Combine, name: str, base: torch.Tensor) -> Any:
        """What :func:`combine_deltas` sparsifies with: :attr:`sparsify`, or a function of (expert, delta)."""
        return self.sparsify

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        from layerswap.merge.methods._math import combine_deltas

        return combine_deltas(
            deltas,
            [w for _, w in op.weights],
            sparsify=self.sparsifier(op, name, base),
            densities=op.densities or None,
            consensus=self.consensus,
            normalize=op.normalize,
            lam=op.lam,
            rescale=op.rescale,
            generators=self.generators(op, name, base),
            consume=True,  # each delta is a fresh float32 read (or zeros), overwritten in place
        )

    def mergekit_parameters(self, op: Combine, shared: dict[str, Any]) -> list[str]:
        """Add method-specific shared parameters to ``shared``; return notes."""
        return []

    def mergekit_model_parameters(self, op: Combine, index: int) -> dict[str, Any]:
        """Method-specific parameters of expert ``index`` (mergekit's per-model ones: gamma, epsilon)."""
        return {}

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        op = plan.layer_ops[0]
        assert isinstance(op, Combine)
        models = []
        for i, (label, w) in enumerate(op.weights):
            params: dict[str, Any] = {"weight": w}
            if op.densities:
                params["density"] = op.densities[i]
            params.update(self.mergekit_model_parameters(op, i))
            models.append({"model": model_path(config, label), "parameters": params})
        shared: dict[str, Any] = {"normalize": op.normalize, "lambda": layer_lambdas(plan)}
        notes = self.mergekit_parameters(op, shared)
        doc = {
            "merge_method": self.mergekit_method or op.method,
            "base_model": model_path(config, BASE),
            "models": models,
            "parameters": shared,
        }
        return doc, notes + non_layer_note(plan)
