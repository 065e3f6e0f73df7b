"""The merge-method registry: each method is a class in its own module, registered with ``@register``.

What a method owns: its params model (validated against ``params`` of the config, unknown keys
listed), its cross-field checks, its plan (which layers are selections, blends or computed task
vectors), the formula of the task vectors it computes, its mergekit export and a one-line summary
for the CLI help. Config validation, planning, the engine, the export and the CLI read this
registry, so a new method is one module of :mod:`layerswap.merge.methods` (found at import).

The sweep's baseline candidates are registered here too (``@baseline``), by the module of the
method they use; ``identity`` (the base or one expert alone) is a baseline, not a merge method.
This module imports no torch: the formulas import it when a tensor is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from layerswap.config import StrictModel
from layerswap.errors import ConfigError
from layerswap.merge.ops import Combine, MergePlan, Op

if TYPE_CHECKING:
    import torch


class MergeSpec(Protocol):
    """What a method reads of a merge config (:class:`layerswap.merge.config.MergeConfig` is one)."""

    method: str
    experts: dict[str, str]
    base: str | None
    params: dict[str, Any]

    def non_layer_policy(self) -> str: ...


@dataclass(frozen=True)
class Layout:
    """A method's plan before the non-layer policy: one op per layer, the op that ``non_layer:
    merge`` applies (None: not offered) and the labels that ``non_layer: average`` blends."""

    layer_ops: tuple[Op, ...]
    merge_op: Op | None
    average_labels: tuple[str, ...]


class MergeMethod:
    """One merge method. Subclass, set the class attributes, override what the method does."""

    #: The config's ``method`` value.
    name: ClassVar[str]
    #: One line for ``layerswap merge --help``.
    summary: ClassVar[str]
    #: The pydantic model of ``params`` (a :class:`~layerswap.config.StrictModel`).
    params_model: ClassVar[type[StrictModel]]
    #: Where the method sits in listings (``valid methods: ...``, the CLI help); ties keep import order.
    rank: ClassVar[int] = 1000
    #: Picks whole tensors from one source: no ``non_layer: merge``; LoRA experts may stay an adapter.
    selection: ClassVar[bool] = False
    #: Reads the base model whatever the non-layer policy (task vectors, revert).
    needs_base: ClassVar[bool] = False

    def default_non_layer(self, params: Mapping[str, Any]) -> str:
        """The non-layer policy when the config names none (``params`` are not validated yet)."""
        return "merge"

    def check(self, config: MergeSpec, params: Any) -> None:
        """Cross-field rules between ``params`` and the rest of the config (raise ConfigError)."""

    def layout(self, config: MergeSpec, params: Any, num_layers: int) -> Layout:
        raise NotImplementedError(f"merge method {self.name} defines no layout")

    def combine(self, op: Combine, name: str, deltas: Iterator[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
        """The merged float32 task vector of tensor ``name`` for a :class:`Combine` naming this method.

        ``deltas`` yields ``expert - base`` per label of ``op.weights``, each a fresh float32
        tensor the formula may overwrite; the engine adds ``base`` to the result. Where
        ``op.from_base`` is false it yields the experts' weights, ``base`` is None and the result
        is the merged tensor itself.
        """
        raise TypeError(f"merge method {self.name} computes no task vector")

    def to_mergekit(self, config: MergeSpec, plan: MergePlan, num_layers: int) -> tuple[dict[str, Any], list[str]]:
        """The mergekit config (without ``dtype``) and notes on what it cannot express."""
        raise ConfigError(f"method {self.name} has no mergekit equivalent: drop --emit-mergekit")


#: Registered methods by name, in listing order.
METHODS: dict[str, MergeMethod] = {}

M = TypeVar("M", bound=type[MergeMethod])


def _sort(table: dict[str, Any]) -> None:
    items = sorted(table.items(), key=lambda kv: kv[1].rank)  # stable: equal ranks keep registration order
    table.clear()
    table.update(items)


def register(cls: M) -> M:
    """Class decorator: add the method to :data:`METHODS` (its name must be new)."""
    if cls.name in METHODS:
        raise ValueError(f"merge method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls()
    _sort(METHODS)
    return cls


def unregister(name: str) -> None:
    """Remove a method and the baseline of the same name (tests register throwaway methods)."""
    METHODS.pop(name, None)
    BASELINES.pop(name, None)


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}") from None


# ---------------------------------------------------------------------------- sweep baselines

#: ``(candidate name, method, params)``: what the sweep evaluates for one baseline.
BaselineCandidate = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class BaselineContext:
    """What a baseline may depend on: the model depth, the best swap's middle block, densities, seed,
    and each expert's data spec (the data-aware merges: Fisher, RegMean)."""

    num_layers: int
    middle: tuple[int, int] | None
    density: float | Mapping[str, float] | None = None
    seed: int = 0
    data: Mapping[str, str] | None = None

    def data_for(self, method: str) -> dict[str, str]:
        """The experts' data specs, which a data-aware baseline needs (a one-line error without them)."""
        if not self.data:
            raise ConfigError(
                f"baseline {method} runs each expert over its own data: give the sweep each expert's data spec "
                "(candidates.baseline_data: {math: gsm8k, lang: ntrex:sw}) or drop the baseline"
            )
        return dict(self.data)

    def density_for(self, method: str) -> float:
        """The density given for ``method`` (one float for all, or per method name), else its default."""
        given = self.density.get(method) if isinstance(self.density, Mapping) else self.density
        if given is not None:
            return float(given)
        return float(get_method(method).params_model.model_fields["density"].default)


@dataclass(frozen=True)
class Baseline:
    name: str
    rank: int
    build: Callable[[BaselineContext], BaselineCandidate]


BASELINES: dict[str, Baseline] = {}

F = TypeVar("F", bound=Callable[[BaselineContext], BaselineCandidate])


def baseline(name: str, *, rank: int = 1000) -> Callable[[F], F]:
    """Decorator: ``build(context)`` is the sweep's candidate for baseline ``name``."""

    def add(build: F) -> F:
        if name in BASELINES:
            raise ValueError(f"sweep baseline {name!r} is registered twice")
        BASELINES[name] = Baseline(name, rank, build)
        _sort(BASELINES)
        return build

    return add


def baseline_names() -> tuple[str, ...]:
    return tuple(BASELINES)


def sweep_baselines(
    names: Iterable[str],
    *,
    num_layers: int,
    middle: tuple[int, int] | None,
    density: float | Mapping[str, float] | None = None,
    seed: int = 0,
    data: Mapping[str, str] | None = None,
) -> list[BaselineCandidate]:
    """The sweep's baseline candidates, in the order of ``names``.

    ``middle``: the (first, last) middle layer of the best swap, which ``revert`` keeps from the
    math expert. ``density``: one float for every sparsifying method, or ``{method: density}``
    (e.g. ``{"ties": 0.2, "dare_ties": 0.5, "dare_linear": 0.5}``); a method left out uses its
    params default. ``seed``: DARE's mask seed. ``data``: each expert's data spec (Fisher, RegMean).
    """
    context = BaselineContext(num_layers, middle, density, seed, data)
    out: list[BaselineCandidate] = []
    for name in names:
        if name not in BASELINES:
            raise ConfigError(f"unknown baseline {name!r}: valid baselines are {', '.join(BASELINES)}")
        out.append(BASELINES[name].build(context))
    return out
