"""Where experts changed their base, how their changes overlap, and which layers to swap.

``analyze(base, {"math": ..., "lang": ...})`` streams the experts' deltas (full models or LoRA
adapters, never merged) and ``importance(base, {"math": "gsm8k", "lang": "ntrex:sw"})`` measures
the diagonal Fisher of the base on each task's data; both return an :class:`Analysis` with the
same tables, plots and swap-boundary recommendation. ``run_lenses(base, experts, "deltas,cka,logit,lape,grad",
data=...)`` runs any registered lenses (``analysis/lenses/``), each ending in the same tables and rule. See ``docs/analysis.md``.
"""

from __future__ import annotations

from layerswap.analysis.boundaries import BoundaryRule
from layerswap.analysis.core import analyze, build_analysis, resolve_roles
from layerswap.analysis.report import Analysis

__all__ = ["Analysis", "BoundaryRule", "analyze", "build_analysis", "importance", "lens_recommendations", "resolve_roles", "run_lenses"]


def __getattr__(name: str):
    # importance pulls in transformers; import it only when asked for.
    if name == "importance":
        from layerswap.analysis.importance import importance

        return importance
    if name in ("run_lenses", "lens_recommendations"):  # the lens registry (analysis/lenses/), loaded when asked for
        from layerswap.analysis import lenses

        return getattr(lenses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
