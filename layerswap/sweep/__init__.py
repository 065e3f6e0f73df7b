"""Merge-then-evaluate sweeps over candidate swaps and baselines, their report, and the demo.

- :mod:`~layerswap.sweep.config`: the pydantic schemas (:class:`SweepConfig`, :class:`Candidate`)
- :mod:`~layerswap.sweep.candidates`: analysis, grid and baseline candidates, and their merge configs
- :mod:`~layerswap.sweep.store`: the resumable per-candidate store (rows and per-example scores)
- :mod:`~layerswap.sweep.loop`: :func:`run_sweep`, merging each candidate in memory into one model
- :mod:`~layerswap.sweep.compare`: paired comparisons between candidates and the verdict in words
- :mod:`~layerswap.sweep.report`: the leader, the figures and ``report.md`` (drawn from ``results.csv``
  and ``comparisons.csv``)
- :mod:`~layerswap.sweep.demo`: the whole pipeline on the embedded default model

The report and the demo are submodules, not re-exported here (``from layerswap.sweep import
report``), so loading a sweep config does not pull in matplotlib.
"""

from __future__ import annotations

from layerswap.sweep.candidates import build_candidates
from layerswap.sweep.config import Candidate, CandidatesSpec, GridSpec, SweepConfig, load_sweep_config, validate_sweep_dict
from layerswap.sweep.loop import run_candidates, run_sweep
from layerswap.sweep.store import ResultStore, settings_key

__all__ = [
    "Candidate",
    "CandidatesSpec",
    "GridSpec",
    "ResultStore",
    "SweepConfig",
    "build_candidates",
    "load_sweep_config",
    "run_candidates",
    "run_sweep",
    "settings_key",
    "validate_sweep_dict",
]
