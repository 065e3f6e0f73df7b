"""Where experts changed their base, how their changes overlap, and which layers to swap.

``analyze(base, {"math": ..., "lang": ...})`` streams the experts' deltas (full models or LoRA
adapters, never merged) and ``importance(base, {"math": "gsm8k", "lang": "ntrex:sw"})`` measures
the diagonal Fisher of the base on each task's data; both return an :class:`Analysis` with the
same tables, plots and swap-boundary recommendation. ``run_lenses(base, experts, "deltas,cka,logit,lape,grad",
data=...)`` runs any registered lenses (``analysis/lenses/``), each ending in the same tables and rule. See ``docs/analysis.md``.
"""

from __future__ import annotations

from layerswap.lazy import lazy_exports

#: Every name loads on first use: the analysis pulls in torch and pandas, importance transformers and the
#: lens registry every lens, and ``import layerswap.cli`` (which reads ``analysis.options``) must pay for none.
__all__ = [
    *lazy_exports(
        __name__,
        {
            "Analysis": "layerswap.analysis.report",
            "BoundaryRule": "layerswap.analysis.boundaries",
            "analyze": "layerswap.analysis.core",
            "build_analysis": "layerswap.analysis.core",
            "resolve_roles": "layerswap.analysis.core",
            "importance": "layerswap.analysis.importance",
            "run_lenses": "layerswap.analysis.lenses",
            "lens_recommendations": "layerswap.analysis.lenses",
        },
    ),
]
