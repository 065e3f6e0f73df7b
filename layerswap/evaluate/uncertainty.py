"""The uncertainty columns of every summary row: ``stderr``, ``ci_low``, ``ci_high`` of its headline metric.

- a mean of per-example scores (exact match, accuracy, gold log-likelihood): the standard error
  of the mean (``ddof=1``, as lm-eval's ``*_stderr``) and the normal 95% interval;
- a ratio (bits per byte = total bits / total bytes): a percentile bootstrap over examples with
  :data:`BOOTSTRAP_RESAMPLES` resamples and seed :data:`BOOTSTRAP_SEED` (so reruns agree), whose
  standard deviation is the ``stderr``.

The task runners fill their rows with these as they build them (imported when a task runs: it pulls
in scipy). :mod:`layerswap.evaluate.scores` reads the same numbers back from the records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from layerswap.stats import Estimate, mean_estimate, ratio_estimate

#: The columns added to every summary row, right after its headline metric (with ``n``).
UNCERTAINTY_COLUMNS = ("stderr", "ci_low", "ci_high")
#: Confidence of the summary intervals.
CONFIDENCE = 0.95
#: Bootstrap settings of ratio metrics: fixed, so a rerun or a resumed sweep gives the same interval.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def _columns(est: Estimate) -> dict[str, float]:
    return {"stderr": est.stderr, "ci_low": est.low, "ci_high": est.high}


def mean_columns(values: Sequence[float]) -> dict[str, float]:
    """``stderr``, ``ci_low``, ``ci_high`` of a mean of per-example scores (normal interval)."""
    return _columns(mean_estimate([float(v) for v in values], confidence=CONFIDENCE))


def ratio_columns(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, float]:
    """``stderr``, ``ci_low``, ``ci_high`` of ``sum(num) / sum(den)`` (bootstrap over examples)."""
    est = ratio_estimate(
        numerators, denominators, confidence=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED
    )
    return _columns(est)


def with_uncertainty(row: dict[str, Any], metric: str, columns: dict[str, float]) -> dict[str, Any]:
    """``row`` with ``columns`` inserted right after ``metric`` (the other columns keep their order)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        out[key] = value
        if key == metric:
            out.update(columns)
    if metric not in row:
        out.update(columns)
    return out
