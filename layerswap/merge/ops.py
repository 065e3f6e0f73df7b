"""The plan's vocabulary: which source feeds an output tensor, as hashable data.

A plan is one operation per transformer layer plus one for the rest. Operations are frozen
dataclasses so the on-disk merge, the in-memory merge and the mergekit export read the same plan,
and the in-memory merge can skip tensors whose operation did not change between two candidates.
This module imports no method: methods build these operations (see :mod:`layerswap.merge.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from layerswap.io import Architecture

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
    """``base + merged task vector``; ``method`` names the registered method whose formula merges
    the deltas (task arithmetic, TIES, DARE; overlapping reverts use ``task_arithmetic``).

    ``from_base=False``: the formula combines the experts' weights themselves, no base (SLERP,
    NuSLERP without a base). ``options``: the method's own scalars for this layer (DELLA's epsilon,
    SLERP's t, ...), as ``(name, value)`` pairs so the op stays hashable.
    """

    method: str
    weights: tuple[tuple[str, float], ...]
    densities: tuple[float, ...] = ()
    lam: float = 1.0
    normalize: bool = False
    rescale: str = "density"
    seed: int = 0
    from_base: bool = True
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    def describe(self) -> str:
        inner = f"{self.method}({', '.join(label for label, _ in self.weights)})"
        return f"base + {inner}" if self.from_base else inner


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
                if isinstance(op, Combine) and op.from_base:
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
