"""The uncertainty columns of every summary row: ``stderr``, ``ci_low``, ``ci_high`` of its headline metric.

- a mean of per-example scores (exact match, accuracy, gold log-likelihood): the standard error
  of the mean (``ddof=1``, as lm-eval's ``*_stderr``) and the normal 95% interval (Wilson's score
  interval for 0/1 scores, which does not collapse to [0, 0] at no correct answer);
- a ratio (bits per byte = total bits / total bytes): a percentile bootstrap over examples with
  :data:`BOOTSTRAP_RESAMPLES` resamples and seed :data:`BOOTSTRAP_SEED` (so reruns agree), whose
  standard deviation is the ``stderr``.

The task runners fill their rows with these as they build them (imported when a task runs: it pulls
in scipy). :mod:`layerswap.evaluate.scores` reads the same numbers back from the records.

A model that overflows (an Inf weight) gives NaN or infinite per-example scores: the metric is
still reported as computed, its three columns are NaN, and :func:`warn_non_finite` says so in one
line (task, language, how many examples) instead of losing every result to an exception.
"""

from __future__ import annotations

import math
import warnings
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


NAN_COLUMNS = {"stderr": math.nan, "ci_low": math.nan, "ci_high": math.nan}


def _columns(est: Estimate) -> dict[str, float]:
    return {"stderr": est.stderr, "ci_low": est.low, "ci_high": est.high}


def count_non_finite(*columns: Sequence[float]) -> int:
    """Examples with a NaN or infinite value in any of ``columns`` (same length, one value per example)."""
    return sum(1 for values in zip(*columns, strict=True) if not all(math.isfinite(float(v)) for v in values))


def warn_non_finite(bad: int, total: int, task: str | None, lang: str | None) -> None:
    """The one-line warning for a metric whose uncertainty cannot be computed."""
    warnings.warn(
        f"{task or 'task'} {lang or ''}: {bad} of {total} examples have a NaN or infinite score (the model overflowed?); "
        "the metric is reported as computed, its stderr and interval as NaN",
        RuntimeWarning,
        stacklevel=3,
    )


def mean_columns(values: Sequence[float], *, task: str | None = None, lang: str | None = None) -> dict[str, float]:
    """``stderr``, ``ci_low``, ``ci_high`` of a mean of per-example scores (normal interval; Wilson's for 0/1).

    NaN or infinite scores give NaN columns and a warning naming ``task`` and ``lang``.
    """
    values = [float(v) for v in values]
    bad = count_non_finite(values)
    if bad:
        warn_non_finite(bad, len(values), task, lang)
        return dict(NAN_COLUMNS)
    return _columns(mean_estimate(values, confidence=CONFIDENCE))


def ratio_columns(
    numerators: Sequence[float], denominators: Sequence[float], *, task: str | None = None, lang: str | None = None
) -> dict[str, float]:
    """``stderr``, ``ci_low``, ``ci_high`` of ``sum(num) / sum(den)`` (bootstrap over examples).

    A NaN or infinite numerator or denominator gives NaN columns and a warning naming ``task`` and ``lang``.
    """
    numerators, denominators = [float(v) for v in numerators], [float(v) for v in denominators]
    if len(numerators) == len(denominators):
        bad = count_non_finite(numerators, denominators)
        if bad:
            warn_non_finite(bad, len(numerators), task, lang)
            return dict(NAN_COLUMNS)
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
