"""Merge-then-evaluate sweeps over candidate swaps and baselines, and their report.

- :mod:`~layerswap.sweep.config`: the pydantic schemas (:class:`SweepConfig`, :class:`Candidate`)
- :mod:`~layerswap.sweep.candidates`: analysis, grid and baseline candidates, and their merge configs
- :mod:`~layerswap.sweep.store`: the resumable per-candidate store (rows and per-example scores)
- :mod:`~layerswap.sweep.resume`: the resume key (result-changing settings and the inputs' contents)
- :mod:`~layerswap.sweep.loop`: :func:`run_sweep`, merging each candidate in memory into one model
- :mod:`~layerswap.sweep.search`: the search strategies behind one interface (exhaustive, halving)
- :mod:`~layerswap.sweep.halving`: the successive-halving race
- :mod:`~layerswap.sweep.selection`: the one place that decides (leader, best swap, best baseline) and
  :class:`SweepResult`
- :mod:`~layerswap.sweep.compare`: paired comparisons between candidates and the verdict in words
- :mod:`~layerswap.sweep.figures`, :mod:`~layerswap.sweep.report`: the figures and ``report.md``

The figures and the report are submodules, not re-exported here (``from layerswap.sweep import
report``), so loading a sweep config does not pull in matplotlib; the names below load on first use.
"""

from layerswap.lazy import lazy_exports

#: Public names, loaded on first use so that the CLI can read the configs without pandas or torch.
__all__ = lazy_exports(
    __name__,
    {
        "Candidate": "layerswap.sweep.config",
        "CandidatesSpec": "layerswap.sweep.config",
        "GridSpec": "layerswap.sweep.config",
        "SweepConfig": "layerswap.sweep.config",
        "load_sweep_config": "layerswap.sweep.config",
        "validate_sweep_dict": "layerswap.sweep.config",
        "build_candidates": "layerswap.sweep.candidates",
        "run_candidates": "layerswap.sweep.search",
        "run_sweep": "layerswap.sweep.loop",
        "ResultStore": "layerswap.sweep.store",
        "SweepResult": "layerswap.sweep.selection",
        "ResumeKey": "layerswap.sweep.resume",
        "settings_key": "layerswap.sweep.resume",
    },
)
