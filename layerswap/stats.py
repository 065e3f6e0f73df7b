"""Uncertainty for every number layerswap reports: standard errors, intervals, paired tests.

A foundation module (numpy and scipy only). Each function takes per-example scores (one value per
evaluation example, in the same example order for the two sides of a paired comparison) and
returns plain floats or a small frozen dataclass, so evaluate, the sweep and the report share one
definition of every interval:

- :func:`mean_stderr` / :func:`mean_estimate`: the mean and its standard error (``ddof=1``, as
  lm-evaluation-harness's ``*_stderr``), with a normal-approximation interval; for 0/1 scores
  (accuracy, exact match) Wilson's score interval (:func:`wilson_interval`), which stays honest at
  0 or n correct (0 of 12 right: [0, 0.24], where the normal interval says [0, 0]).
- :func:`bootstrap_ci` and :func:`ratio_estimate`: percentile bootstrap over examples
  (``scipy.stats.bootstrap``) with a fixed seed, for statistics without a closed-form error, such as
  bits per byte (total bits / total bytes).
- :func:`mcnemar`, :func:`paired_difference`, :func:`paired_ratio_difference`: two candidates
  scored on the same examples. The interval is a paired bootstrap (examples resampled together),
  for 0/1 scores Newcombe's continuity-corrected hybrid score interval for paired proportions
  (:func:`paired_binary_interval`: not degenerate when no example is discordant); the p-value is McNemar's exact test for 0/1 scores (``scipy.stats.binomtest`` on the discordant
  pairs) and otherwise a paired permutation test (``scipy.stats.permutation_test``,
  ``permutation_type="samples"``: each example's two scores swapped at random).
- :func:`holm`: Holm's step-down correction for a family of p-values.
- :func:`spearman_ci`: Spearman's rho with a bootstrap interval over pairs.
- Examples needed and power: :mod:`layerswap.power`.

Empty inputs give NaN, never an exception: a caller that has no examples reports "n = 0".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

__all__ = [
    "Estimate",
    "Paired",
    "bootstrap_ci",
    "holm",
    "is_binary",
    "mcnemar",
    "mean_estimate",
    "mean_stderr",
    "paired_difference",
    "paired_ratio_difference",
    "ratio_estimate",
    "spearman_ci",
    "paired_binary_interval",
    "wilson_interval",
    "unpaired_difference",
]

#: Per-example scores: a list, tuple, numpy array or pandas Series of numbers (bools count as 0/1).
Scores = Sequence[float] | np.ndarray
NAN = float("nan")
#: Resamples evaluated at once: bounds memory (about 8 MB per array per 1000 examples) and keeps numpy fast.
_BATCH = 1000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and a two-sided interval over ``n`` examples."""

    value: float
    stderr: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """``diff`` = A minus B with a paired interval; ``test`` names what gave ``p_value``."""

    diff: float
    low: float
    high: float
    p_value: float
    test: str
    n: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _array(values: Scores, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite scores; drop or fix those examples first")
    return arr


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return float(_st.norm.ppf(0.5 + confidence / 2.0))


def is_binary(values: Scores) -> bool:
    """True when every value is 0 or 1 (exact-match style scores)."""
    arr = np.asarray(values, dtype=np.float64)
    return bool(arr.size) and bool(np.all((arr == 0.0) | (arr == 1.0)))


def mean_stderr(values: Scores) -> tuple[float, float]:
    """Mean and standard error of the mean, ``std(ddof=1) / sqrt(n)``.

    The same definition as lm-evaluation-harness's ``mean_stderr`` (``sample_stddev / sqrt(n)``).
    One example gives a NaN standard error; none gives NaN for both.
    """
    arr = _array(values)
    if arr.size == 0:
        return NAN, NAN
    if arr.size == 1:
        return float(arr[0]), NAN
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def mean_estimate(values: Scores, *, confidence: float = 0.95) -> Estimate:
    """The mean with its standard error and the normal interval ``mean +- z * stderr``; for 0/1
    scores Wilson's score interval instead (the standard error stays lm-eval's)."""
    mean, se = mean_stderr(values)
    z = _z(confidence)
    n = int(np.asarray(values).size)
    if n and is_binary(values):
        low, high = wilson_interval(int(round(mean * n)), n, confidence=confidence)
        return Estimate(mean, se, low, high, n)
    return Estimate(mean, se, mean - z * se, mean + z * se, n)


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``scipy.stats.binomtest(...).proportion_ci``)."""
    _z(confidence)
    if n <= 0:
        return NAN, NAN
    ci = _st.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def paired_binary_interval(a: Scores, b: Scores, *, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval with continuity correction (1998, method 11) of ``mean(a) - mean(b)``
    for paired 0/1 scores.

    Built from each side's continuity-corrected Wilson interval and the correlation ``phi`` of the
    2x2 table (its numerator ``ad - bc`` shrunk by ``n/2`` when positive). The correction keeps the
    interval from collapsing to a point when the two candidates agree on every example (method 10
    gives exactly [0, 0] for 6 right and 6 wrong on both sides; this gives about [-0.16, +0.16]),
    at the cost of being conservative (97-98% coverage at 20-170 examples in the tests' simulations).
    """
    x, y = _array(a, "a"), _array(b, "b")
    _same_length(x, y)
    n = int(x.size)
    if n == 0:
        return NAN, NAN
    _z(confidence)
    both, only_a = int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())
    only_b, neither = int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())

    def wilson_cc(k: int) -> tuple[float, float]:
        ci = _st.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilsoncc")
        return float(ci.low), float(ci.high)

    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_cc(both + only_a)
    l2, u2 = wilson_cc(both + only_b)
    den = float(both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    ad_bc = float(both * neither - only_a * only_b)
    num = max(ad_bc - n / 2.0, 0.0) if ad_bc > 0 else ad_bc
    phi = num / math.sqrt(den) if den > 0 else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def _constant(*arrays: np.ndarray) -> bool:
    return all(a.size == 0 or bool(np.all(a == a[0])) for a in arrays)


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable, *, paired: bool, vectorized: bool,
               confidence: float, n_resamples: int, seed: int):
    _z(confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _st.DegenerateDataWarning)
        return _st.bootstrap(data, statistic, paired=paired, vectorized=vectorized,
                             confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", batch=_BATCH, rng=np.random.default_rng(seed))


def bootstrap_ci(values: Scores, statistic: Callable = np.mean, *,
                 confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)`` over examples, with a fixed seed.

    ``statistic`` is called as ``statistic(sample, axis=-1)`` when it accepts ``axis`` (numpy
    reductions do; fast), else once per resample. Constant values give the degenerate interval
    ``(s, s)``; fewer than two values give NaN.
    """
    arr = _array(values)
    if arr.size < 2:
        return NAN, NAN
    if _constant(arr):
        s = float(statistic(arr))
        return s, s
    try:
        res = _bootstrap((arr,), statistic, paired=False, vectorized=True, confidence=confidence,
                         n_resamples=n_resamples, seed=seed)
    except TypeError:  # a statistic without ``axis``
        res = _bootstrap((arr,), statistic, paired=False, vectorized=False, confidence=confidence,
                         n_resamples=n_resamples, seed=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _ratio(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(num, axis=axis) / np.sum(den, axis=axis)


def ratio_estimate(numerators: Scores, denominators: Scores, *, confidence: float = 0.95, n_resamples: int = 2000,
                   seed: int = 0) -> Estimate:
    """``sum(numerators) / sum(denominators)`` with a percentile bootstrap over examples.

    Each example's numerator and denominator are resampled together (bits per byte: one
    sentence's bits with its bytes). ``stderr`` is the bootstrap standard deviation.
    """
    num, den = _array(numerators, "numerators"), _array(denominators, "denominators")
    if num.size != den.size:
        raise ValueError(f"{num.size} numerators but {den.size} denominators: one of each per example")
    n = int(num.size)
    if n == 0 or float(den.sum()) == 0.0:
        return Estimate(NAN, NAN, NAN, NAN, n)
    value = float(num.sum() / den.sum())
    if n < 2:
        return Estimate(value, NAN, NAN, NAN, n)
    if np.all(den > 0) and _constant(num / np.where(den > 0, den, 1.0)):  # every resample gives the same ratio
        return Estimate(value, 0.0, value, value, n)
    res = _bootstrap((num, den), _ratio, paired=True, vectorized=True, confidence=confidence,
                     n_resamples=n_resamples, seed=seed)
    ci = res.confidence_interval
    return Estimate(value, float(res.standard_error), float(ci.low), float(ci.high), n)


def mcnemar(a: Scores, b: Scores) -> float:
    """Exact McNemar p-value (two-sided) for paired 0/1 scores of two systems on the same examples.

    Only the discordant examples count: under the null hypothesis "A right, B wrong" and "A wrong,
    B right" are equally likely, so their split is Binomial(discordant, 1/2)
    (``scipy.stats.binomtest``). No discordant example gives p = 1.
    """
    x, y = _array(a, "a"), _array(b, "b")
    _same_length(x, y)
    if not (is_binary(x) or x.size == 0) or not (is_binary(y) or y.size == 0):
        raise ValueError("mcnemar needs 0/1 scores; use paired_difference for other scores")
    a_only = int(np.sum((x == 1) & (y == 0)))
    b_only = int(np.sum((x == 0) & (y == 1)))
    if a_only + b_only == 0:
        return 1.0
    return float(_st.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def _same_length(x: np.ndarray, y: np.ndarray) -> None:
    if x.size != y.size:
        raise ValueError(f"paired scores need the same examples on both sides: {x.size} vs {y.size}")


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_difference(a: Scores, b: Scores, *, binary: bool | None = None, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0, n_permutations: int = 9999) -> Paired:
    """Mean of ``a - b`` over shared examples, a paired interval and a p-value.

    ``a[i]`` and ``b[i]`` must score the same example. The interval is the percentile bootstrap of
    the per-example differences (``n_resamples``, ``seed``), for 0/1 scores Newcombe's paired score
    interval (:func:`paired_binary_interval`). ``binary`` (default: detected from the
    values) picks the test: McNemar's exact test for 0/1 scores, else a paired permutation test
    (``scipy.stats.permutation_test``, ``permutation_type="samples"``; exact when ``2**n`` is at
    most ``n_permutations``, else that many random sign swaps).
    """
    x, y = _array(a, "a"), _array(b, "b")
    _same_length(x, y)
    n = int(x.size)
    if n == 0:
        return Paired(NAN, NAN, NAN, NAN, "none", 0)
    binary = (is_binary(x) and is_binary(y)) if binary is None else binary
    d = x - y
    diff = float(d.mean())
    if binary:
        low, high = paired_binary_interval(x, y, confidence=confidence)
        return Paired(diff, low, high, mcnemar(x, y), "mcnemar", n)
    if n < 2:
        low = high = NAN
    elif _constant(d):
        low = high = diff
    else:
        res = _bootstrap((x, y), _mean_diff, paired=True, vectorized=True, confidence=confidence,
                         n_resamples=n_resamples, seed=seed)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.all(d == 0):
        return Paired(diff, low, high, 1.0, "permutation", n)
    if n < 2:  # one example: no permutation distribution (scipy refuses), nothing to test
        return Paired(diff, low, high, NAN, "permutation", n)
    perm = _st.permutation_test((x, y), _mean_diff, permutation_type="samples", vectorized=True,
                                n_resamples=n_permutations, alternative="two-sided", batch=_BATCH,
                                rng=np.random.default_rng(seed))
    return Paired(diff, low, high, float(perm.pvalue), "permutation", n)


def unpaired_difference(a: Scores, b: Scores, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` with the normal interval that ignores pairing (for comparison only).

    Its standard error is ``sqrt(se_a**2 + se_b**2)``: what one gets by comparing two reported
    ``stderr`` columns. On examples scored by both systems the paired interval is narrower whenever
    the two systems' scores are positively correlated.
    """
    ma, sa = mean_stderr(a)
    mb, sb = mean_stderr(b)
    se = math.hypot(sa, sb)
    z = _z(confidence)
    return ma - mb, ma - mb - z * se, ma - mb + z * se


def ratio_inputs(num_a: Scores, den_a: Scores, num_b: Scores, den_b: Scores) -> tuple[np.ndarray, ...]:
    """The four per-example arrays of a paired ratio comparison, checked, and the observed difference
    ``sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)`` (NaN with no examples or a zero denominator)."""
    na, da = _array(num_a, "num_a"), _array(den_a, "den_a")
    nb, db = _array(num_b, "num_b"), _array(den_b, "den_b")
    for arr in (da, nb, db):
        _same_length(na, arr)
    if na.size == 0 or da.sum() == 0 or db.sum() == 0:
        return na, da, nb, db, NAN
    return na, da, nb, db, float(na.sum() / da.sum() - nb.sum() / db.sum())


def paired_ratio_difference(num_a: Scores, den_a: Scores, num_b: Scores, den_b: Scores, *,
                            confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                            n_permutations: int = 9999) -> Paired:
    """``sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)`` on shared examples (bits per byte).

    The interval resamples examples with all four values together (paired bootstrap); the p-value
    is a paired permutation test that swaps each example's (numerator, denominator) between A and B.
    """
    na, da, nb, db, diff = ratio_inputs(num_a, den_a, num_b, den_b)
    n = int(na.size)
    if math.isnan(diff):
        return Paired(NAN, NAN, NAN, NAN, "none", n)

    def stat(xa, ya, xb, yb, axis=-1):
        return _ratio(xa, ya, axis) - _ratio(xb, yb, axis)

    if n < 2:
        return Paired(diff, NAN, NAN, NAN, "permutation", n)
    if np.array_equal(na, nb) and np.array_equal(da, db):
        return Paired(diff, diff, diff, 1.0, "permutation", n)
    res = _bootstrap((na, da, nb, db), stat, paired=True, vectorized=True, confidence=confidence,
                     n_resamples=n_resamples, seed=seed)
    # Permute example indices: index i < n means "A's example i", n + i means "B's example i";
    # swapping the two index arrays position-wise swaps whole examples between A and B.
    nums, dens = np.concatenate([na, nb]), np.concatenate([da, db])

    def swapped(ia, ib, axis=-1):
        ia, ib = ia.astype(np.intp), ib.astype(np.intp)
        return _ratio(nums[ia], dens[ia], axis) - _ratio(nums[ib], dens[ib], axis)

    idx = np.arange(n)
    perm = _st.permutation_test((idx, idx + n), swapped, permutation_type="samples", vectorized=True,
                                n_resamples=n_permutations, alternative="two-sided", batch=_BATCH,
                                rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return Paired(diff, float(ci.low), float(ci.high), float(perm.pvalue), "permutation", n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN stays NaN and is not counted).

    Sorted ascending, the k-th smallest of m p-values becomes ``max_{j<=k} (m - j + 1) * p_(j)``,
    capped at 1; rejecting adjusted p < alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    running = 0.0
    for k, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def _rank_corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_ci(x: Scores, y: Scores, *, confidence: float = 0.95,
                n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Spearman's rho (``scipy.stats.spearmanr``) and a percentile bootstrap interval over pairs.

    Pairs are resampled together; a resample whose x or y is constant has no rank correlation and
    is dropped (with few pairs, e.g. four swaps, many are, and the interval is correspondingly
    wide). Fewer than three pairs give NaN bounds.
    """
    xs, ys = _array(x, "x"), _array(y, "y")
    _same_length(xs, ys)
    if xs.size < 2 or _constant(xs) or _constant(ys):
        return NAN, NAN, NAN
    rho = float(_st.spearmanr(xs, ys).statistic)
    if xs.size < 3:
        return rho, NAN, NAN
    alpha = 1.0 - confidence
    _z(confidence)
    idx = np.random.default_rng(seed).integers(0, xs.size, size=(n_resamples, xs.size))
    rhos = _rank_corr(_st.rankdata(xs[idx], axis=-1), _st.rankdata(ys[idx], axis=-1))
    rhos = rhos[~np.isnan(rhos)]
    if rhos.size == 0:
        return rho, NAN, NAN
    low, high = np.quantile(rhos, [alpha / 2.0, 1.0 - alpha / 2.0])
    return rho, float(low), float(high)
