"""Merge methods, one module each; importing this package registers every one of them.

A module here whose name does not start with ``_`` is a method module: it defines a
:class:`MergeMethod` subclass decorated with :func:`register` (and, if the sweep should offer
it, a :func:`baseline`). Shared code lives in ``_``-modules: the registry, the tensor math, the
task-vector family and the mergekit export helpers. Nothing here imports torch.

The tensor math (``combine_deltas``, ``blend``, ``trim_magnitude``, ``dare_drop``, ``dare_mask``,
``elect_positive``, ``stable_seed``) is importable from this package as before; it loads torch
on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from layerswap.merge.methods._registry import (
    BASELINES,
    METHODS,
    Baseline,
    BaselineCandidate,
    BaselineContext,
    Layout,
    MergeMethod,
    MergeSpec,
    baseline,
    baseline_names,
    get_method,
    register,
    sweep_baselines,
    unregister,
)


def _discover() -> None:
    """Import every method module of this package (each registers itself), in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

#: The sweep's baseline names (``candidates.baselines``), in listing order.
BASELINE_NAMES: tuple[str, ...] = baseline_names()

_MATH = {"blend", "combine_deltas", "dare_drop", "dare_mask", "elect_positive", "stable_seed", "trim_magnitude"}

__all__ = [
    "BASELINES",
    "BASELINE_NAMES",
    "METHODS",
    "Baseline",
    "BaselineCandidate",
    "BaselineContext",
    "Layout",
    "MergeMethod",
    "MergeSpec",
    "baseline",
    "baseline_names",
    "get_method",
    "register",
    "sweep_baselines",
    "unregister",
]


def __getattr__(name: str) -> Any:
    if name in _MATH:
        return getattr(importlib.import_module("layerswap.merge.methods._math"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
