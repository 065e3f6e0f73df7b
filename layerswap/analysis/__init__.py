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
from layerswap.lazy import lazy_exports

#: importance pulls in transformers and the lens registry loads every lens: both only when asked for.
__all__ = [
    "Analysis",
    "BoundaryRule",
    "analyze",
    "build_analysis",
    "resolve_roles",
    *lazy_exports(
        __name__,
        {
            "importance": "layerswap.analysis.importance",
            "run_lenses": "layerswap.analysis.lenses",
            "lens_recommendations": "layerswap.analysis.lenses",
        },
    ),
]
