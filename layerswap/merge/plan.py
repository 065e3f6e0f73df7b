"""Which source feeds each output tensor: one operation per transformer layer, one for the rest.

A plan is pure data (hashable operations), computed from the config and the layer count alone,
so the on-disk merge, the in-memory merge and the mergekit export all read the same plan, and the
in-memory merge can skip tensors whose operation did not change between two candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from layerswap.architecture import Architecture, parse_layer_spec
from layerswap.errors import ConfigError
from layerswap.merge.config import (
    DareParams,
    LayerSwapParams,
    LinearParams,
    MergeConfig,
    RevertParams,
    TaskArithmeticParams,
    TiesParams,
)

BASE = "base"


@dataclass(frozen=True)
class Select:
    """Take the tensor unchanged from one source (``base`` or an expert label)."""

    source: str

    def describe(self) -> str:
        return self.source


@dataclass(frozen=True)
class Blend:
    """``sum_i w_i * theta_i`` over sources (transition layers, linear souping, ``average``)."""

    weights: tuple[tuple[str, float], ...]

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{label}" for label, w in self.weights)


@dataclass(frozen=True)
class Combine:
    """``base + merged task vector`` (task arithmetic, TIES, DARE; overlapping reverts)."""

    method: str
    weights: tuple[tuple[str, float], ...]
    densities: tuple[float, ...] = ()
    lam: float = 1.0
    normalize: bool = False
    rescale: str = "density"
    seed: int = 0

    @property
    def sparsify(self) -> str | None:
        return {"ties": "magnitude", "dare_linear": "random", "dare_ties": "random"}.get(self.method)

    @property
    def consensus(self) -> bool:
        return self.method in ("ties", "dare_ties")

    def describe(self) -> str:
        return f"base + {self.method}({', '.join(label for label, _ in self.weights)})"


Op = Union[Select, Blend, Combine]


@dataclass(frozen=True)
class MergePlan:
    """One operation per transformer layer plus the one for embeddings, final norm and LM head."""

    method: str
    layer_ops: tuple[Op, ...]
    non_layer_op: Op
    non_layer_policy: str

    @property
    def num_layers(self) -> int:
        return len(self.layer_ops)

    def op_for(self, name: str, arch: Architecture) -> Op:
        layer = arch.classify(name).layer
        return self.non_layer_op if layer is None else self.layer_ops[layer]

    @property
    def is_selection(self) -> bool:
        """True when every tensor is taken unchanged from one source (a byte copy)."""
        return all(isinstance(op, Select) for op in (*self.layer_ops, self.non_layer_op))

    def sources(self) -> set[str]:
        used: set[str] = set()
        for op in (*self.layer_ops, self.non_layer_op):
            if isinstance(op, Select):
                used.add(op.source)
            else:
                used.update(label for label, _ in op.weights)
                if isinstance(op, Combine):
                    used.add(BASE)
        return used

    def describe(self) -> dict[str, Any]:
        """Runs of layers with the same operation, for logs and the provenance JSON."""
        runs: list[dict[str, Any]] = []
        for i, op in enumerate(self.layer_ops):
            text = op.describe()
            if runs and runs[-1]["source"] == text and runs[-1]["layers"][1] == i - 1:
                runs[-1]["layers"][1] = i
            else:
                runs.append({"layers": [i, i], "source": text})
        return {
            "layers": [{"layers": f"{r['layers'][0]}-{r['layers'][1]}", "source": r["source"]} for r in runs],
            "non_layer": {"policy": self.non_layer_policy, "source": self.non_layer_op.describe()},
        }

    def summary(self) -> str:
        parts = [f"{d['layers']}: {d['source']}" for d in self.describe()["layers"]]
        return "; ".join(parts) + f"; non-layer tensors: {self.non_layer_op.describe()} (policy {self.non_layer_policy})"


def swap_layout(n: int, p: LayerSwapParams) -> list[Op]:
    """Layer swap: outer expert in the bottom/top blocks, middle expert inside, blends between."""
    nb = p.transition if p.bottom > 0 else 0
    nt = p.transition if p.top > 0 else 0
    used = p.bottom + p.top + nb + nt
    if used > n:
        raise ConfigError(
            f"bottom {p.bottom} + top {p.top} + 2 x transition {p.transition} = {used} layers, but the model has {n}: "
            "lower bottom, top or transition"
        )
    ops: list[Op] = []
    for i in range(n):
        if i < p.bottom or i >= n - p.top:
            ops.append(Select(p.outer))
            continue
        k = 0  # distance (1..T) from the outer block when i is a transition layer
        if i < p.bottom + nb:
            k, t = i - p.bottom + 1, nb
        elif i >= n - p.top - nt:
            k, t = n - p.top - i, nt
        if k:
            w = 0.5 if p.transition_weights == "average" else k / (t + 1)
            ops.append(Blend(((p.middle, w), (p.outer, 1.0 - w))))
        else:
            ops.append(Select(p.middle))
    return ops


def _keep_layers(spec: str | list[int], n: int, label: str) -> set[int]:
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= i < n]
        if bad:
            raise ConfigError(f"revert keep layer {bad[0]} of {label!r} is out of range: valid layers are 0..{n - 1}")
        return set(spec)
    return set(parse_layer_spec(spec, n))


def build_plan(config: MergeConfig, num_layers: int) -> MergePlan:
    """Resolve a validated config into per-layer operations for a model of ``num_layers`` layers."""
    p = config.method_params()
    policy = config.non_layer_policy()
    labels = list(config.experts)
    layer_ops: list[Op]
    method_op: Op | None = None
    if isinstance(p, LayerSwapParams):
        layer_ops = swap_layout(num_layers, p)
        avg_labels = [p.middle, p.outer]
    elif isinstance(p, RevertParams):
        keep = {label: _keep_layers(spec, num_layers, label) for label, spec in p.keep.items()}
        layer_ops = []
        for i in range(num_layers):
            holders = [label for label in labels if i in keep.get(label, set())]
            if not holders:
                layer_ops.append(Select(BASE))
            elif len(holders) == 1:
                layer_ops.append(Select(holders[0]))
            else:
                layer_ops.append(Combine("task_arithmetic", tuple((h, 1.0) for h in holders)))
        avg_labels = labels
    else:
        weights = config.weights(p)
        if isinstance(p, LinearParams):
            total = sum(weights.values()) if p.normalize else 1.0
            method_op = Blend(tuple((k, w / total) for k, w in weights.items()))
        elif isinstance(p, TaskArithmeticParams):
            method_op = Combine("task_arithmetic", tuple(weights.items()), lam=p.lambda_, normalize=p.normalize)
        elif isinstance(p, (TiesParams, DareParams)):
            dens = config.densities(p)
            method_op = Combine(
                config.method,
                tuple(weights.items()),
                densities=tuple(dens[k] for k in weights),
                lam=p.lambda_,
                normalize=p.normalize,
                rescale=getattr(p, "rescale", "density"),
                seed=getattr(p, "seed", 0),
            )
        else:  # pragma: no cover - PARAM_MODELS covers every method
            raise ConfigError(f"method {config.method} has no plan")
        layer_ops = [method_op] * num_layers
        avg_labels = labels
    if policy == "merge":
        assert method_op is not None
        non_layer: Op = method_op
    elif policy == "average":
        non_layer = Blend(tuple((label, 1.0 / len(avg_labels)) for label in avg_labels))
    else:
        non_layer = Select(policy)
    return MergePlan(config.method, tuple(layer_ops), non_layer, policy)
