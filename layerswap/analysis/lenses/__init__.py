"""Lenses: ways of looking at a base and its experts that all end in the same per-layer tables and boundary rule.

``run_lenses(base, experts, "deltas,cka,logit,lape,grad", data={"math": "gsm8k", "lang": "ntrex:sw"}, out=DIR)``
runs the named lenses and writes ``DIR/<lens>/`` for each; :func:`lens_recommendations` reads each
lens's recommended geometry back. A lens is one module here that calls :func:`register`
(see ``base.py``); the built-in ones are imported below. See ``docs/analysis.md``.
"""

from __future__ import annotations

from layerswap.analysis.lenses import cka, grad, lape, logit, weights  # noqa: F401  (each registers its lens)
from layerswap.analysis.lenses.base import LENSES, Lens, LensContext, LensResult, get_lens, register
from layerswap.analysis.lenses.run import LensRun, lens_recommendations, run_lenses

__all__ = ["LENSES", "Lens", "LensContext", "LensResult", "LensRun", "get_lens", "lens_recommendations", "register", "run_lenses"]
