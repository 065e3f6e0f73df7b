"""One paired test per comparison, and the interval printed beside its verdict from the same test.

:mod:`layerswap.stats` gives a p-value from one procedure (McNemar, a permutation test) and an
interval from another (Newcombe, a bootstrap); on a few examples, and after a multiplicity
adjustment, the two can disagree: an interval far from 0 labelled "indistinguishable". Here each
comparison has one test, and its interval is the set of differences that same test would not
reject at the same level, so verdict and interval agree by construction:

- **means** (log-likelihoods, per-example losses): the paired sign-flip permutation test on the
  per-example differences ``d`` (exact enumeration of all ``2**n`` sign patterns up to
  ``n = 16``, else a fixed random set), inverted for a shift: ``delta`` is in the interval when
  the test of "the differences are symmetric about ``delta``" does not reject. Each sign pattern
  counts for a closed range of ``delta`` (a concave quadratic inequality), so the interval and the
  p-value are computed exactly, without a grid or bisection;
- **0/1 scores** (exact match): Newcombe's continuity-corrected paired score interval
  (:func:`layerswap.stats.paired_binary_interval`); its p-value is the smallest level at which
  that interval excludes 0 (the test *is* the interval);
- **ratios** (bits per byte): the paired percentile bootstrap, its p-value read off the same
  resamples (twice the share on the smaller side of 0), so the interval at ``1 - alpha``
  excludes 0 exactly when ``p <= alpha``.

A family of ``m`` comparisons is judged at ``alpha / m`` (Bonferroni) with intervals at
``1 - alpha / m``: Holm's step-down has no interval that agrees with it, Bonferroni's does.
:func:`layerswap.power.examples_needed` says how many examples would detect the observed difference with the
requested power at the same level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from layerswap.stats import NAN, Scores, _array, _same_length, is_binary, paired_binary_interval, ratio_inputs

__all__ = ["PairedTest", "family_level", "paired_ratio_test", "paired_test"]

#: Up to this many examples every sign pattern is enumerated (2**16 patterns): exact p-values.
EXACT_MAX_N = 16


@dataclass(frozen=True)
class PairedTest:
    """A minus B on shared examples: the test's interval at ``1 - level`` and its p-value.

    ``reject`` is ``p_value <= level`` and holds exactly when the interval excludes 0.
    """

    diff: float
    low: float
    high: float
    p_value: float
    level: float
    test: str
    n: int

    @property
    def reject(self) -> bool:
        return bool(self.p_value <= self.level)

    def as_dict(self) -> dict[str, float | int | str | bool]:
        return {**asdict(self), "reject": self.reject}


def family_level(alpha: float, comparisons: int) -> float:
    """The per-comparison level of a family of ``comparisons`` tests at family-wise ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return alpha / max(1, int(comparisons))


def _signs(n: int, n_permutations: int, seed: int) -> np.ndarray:
    """Sign patterns: all ``2**n`` when small, else the identity plus ``n_permutations`` random ones."""
    if n <= EXACT_MAX_N:
        bits = (np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)) & 1
        return 1.0 - 2.0 * bits.astype(np.float64)
    rng = np.random.default_rng(seed)
    random = rng.choice((1.0, -1.0), size=(n_permutations, n))
    return np.vstack([np.ones((1, n)), random])


def _shift_ranges(d: np.ndarray, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each sign pattern, the closed range of shifts ``delta`` at which it is as extreme as the data.

    Pattern ``s`` counts at ``delta`` when ``|mean(s * (d - delta))| >= |mean(d - delta)|``, i.e.
    ``(b^2 - 1) delta^2 + 2 (c - a b) delta + (a^2 - c^2) >= 0`` with ``a = mean(s d)``,
    ``b = mean(s)``, ``c = mean(d)``: a concave quadratic, so a closed range (empty, or everything
    when ``|b| = 1``, the identity and the all-flipped pattern).
    """
    n = d.size
    a = signs @ d / n
    b = signs.sum(axis=1) / n
    c = float(d.mean())
    qa, qb, qc = b * b - 1.0, 2.0 * (c - a * b), a * a - c * c
    scale = max(1.0, float(np.abs(d).max())) ** 2
    tol = 1e-12 * scale
    lo = np.full(a.shape, np.inf)
    hi = np.full(a.shape, -np.inf)
    whole = np.abs(qa) < 1e-12
    lo[whole], hi[whole] = -np.inf, np.inf
    quad = ~whole
    disc = qb[quad] ** 2 - 4.0 * qa[quad] * (qc[quad] + tol)
    ok = disc >= 0
    root = np.sqrt(np.where(ok, disc, 0.0))
    r1 = (-qb[quad] + root) / (2.0 * qa[quad])
    r2 = (-qb[quad] - root) / (2.0 * qa[quad])
    lo[quad] = np.where(ok, np.minimum(r1, r2), np.inf)
    hi[quad] = np.where(ok, np.maximum(r1, r2), -np.inf)
    return lo, hi


def _count(lo_sorted: np.ndarray, hi_sorted: np.ndarray, x: np.ndarray) -> np.ndarray:
    """How many closed ranges ``[lo, hi]`` contain each point of ``x``."""
    return np.searchsorted(lo_sorted, x, side="right") - np.searchsorted(hi_sorted, x, side="left")


def _permutation_test(d: np.ndarray, level: float, n_permutations: int, seed: int) -> tuple[float, float, float]:
    signs = _signs(d.size, n_permutations, seed)
    lo, hi = _shift_ranges(d, signs)
    total = signs.shape[0]
    lo_s, hi_s = np.sort(lo), np.sort(hi)
    # The count is upper semicontinuous (closed ranges): its superlevel sets are closed and their
    # extremes are range endpoints; its maximum over a half-line is at an endpoint or at 0.
    points = np.unique(np.concatenate([lo[np.isfinite(lo)], hi[np.isfinite(hi)], [0.0, float(d.mean())]]))
    counts = _count(lo_s, hi_s, points)
    below, above = counts[points <= 0.0].max(), counts[points >= 0.0].max()
    p_value = min(below, above) / total
    inside = points[counts / total > level]
    low = float(inside.min()) if inside.size else NAN
    high = float(inside.max()) if inside.size else NAN
    if np.sum(lo == -np.inf) / total > level:
        low, high = -math.inf, math.inf  # too few examples: the patterns that count everywhere exceed the level
    return low, high, float(p_value)


def _newcombe_p(x: np.ndarray, y: np.ndarray) -> float:
    """The smallest level at which Newcombe's interval excludes 0 (intervals nest as the level grows)."""
    def excludes(level: float) -> bool:
        low, high = paired_binary_interval(x, y, confidence=1.0 - level)
        return low > 0.0 or high < 0.0

    if not excludes(1.0 - 1e-9):
        return 1.0
    lo, hi = 1e-12, 1.0 - 1e-9
    if excludes(lo):
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi) if hi < 0.5 else (lo + hi) / 2.0
        lo, hi = (lo, mid) if excludes(mid) else (mid, hi)
    return hi


def paired_test(a: Scores, b: Scores, *, level: float = 0.05, binary: bool | None = None,
                n_permutations: int = 9999, seed: int = 0) -> PairedTest:
    """Mean of ``a - b`` over shared examples, tested at ``level``, with the test's own interval.

    0/1 scores (``binary``, detected when None) use Newcombe's interval as the test; other scores
    the paired sign-flip permutation test inverted for a shift (see the module docstring).
    """
    x, y = _array(a, "a"), _array(b, "b")
    _same_length(x, y)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    n = int(x.size)
    if n == 0:
        return PairedTest(NAN, NAN, NAN, NAN, level, "none", 0)
    diff = float((x - y).mean())
    binary = (is_binary(x) and is_binary(y)) if binary is None else binary
    if binary:
        low, high = paired_binary_interval(x, y, confidence=1.0 - level)
        p_value = _newcombe_p(x, y)
        # The bisection's last step can land a hair either side of the level: the interval decides.
        excluded = low > 0.0 or high < 0.0
        if excluded != (p_value <= level):
            p_value = min(p_value, level) if excluded else max(p_value, math.nextafter(level, 1.0))
        return PairedTest(diff, low, high, p_value, level, "newcombe", n)
    d = x - y
    if np.all(d == d[0]):
        if d[0] == 0.0:
            return PairedTest(diff, 0.0, 0.0, 1.0, level, "permutation", n)
        # Every example moves by the same amount: the test's ranges are degenerate; at small n it
        # cannot reject (all patterns with the same count of flips tie), at larger n it can.
    low, high, p_value = _permutation_test(d, level, n_permutations, seed)
    return PairedTest(diff, low, high, p_value, level, "permutation", n)


def paired_ratio_test(num_a: Scores, den_a: Scores, num_b: Scores, den_b: Scores, *, level: float = 0.05,
                      n_resamples: int = 4000, seed: int = 0) -> PairedTest:
    """``sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)`` (bits per byte) by the paired percentile bootstrap.

    The interval at ``1 - level`` is ``[t_(j+1), t_(B-j)]`` of the sorted resampled differences with
    ``j = floor(level * B / 2)``; the p-value ``2 * min(#(t <= 0), #(t >= 0)) / B`` is read off the
    same resamples, so the interval excludes 0 exactly when ``p <= level``.
    """
    na, da, nb, db, diff = ratio_inputs(num_a, den_a, num_b, den_b)
    n = int(na.size)
    if math.isnan(diff):
        return PairedTest(NAN, NAN, NAN, NAN, level, "none", n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)
    t = np.sort(t[np.isfinite(t)])
    total = t.size
    j = int(math.floor(level * total / 2.0))
    low, high = float(t[j]), float(t[total - 1 - j])
    p_value = min(1.0, 2.0 * min(int((t <= 0).sum()), int((t >= 0).sum())) / total)
    return PairedTest(diff, low, high, p_value, level, "bootstrap", n)
