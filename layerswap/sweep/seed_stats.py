"""Training seeds as a source of uncertainty: a two-level bootstrap over seeds and examples.

Every interval in :mod:`layerswap.stats` treats the evaluation examples as the only random thing.
A researcher comparing two recipes (a layer swap against its math expert, say) also faces training
noise: the same recipe with another seed gives other experts, hence other merged candidates. With
the recipe run under ``S`` seeds and every candidate scored on the same ``n`` examples in each, the
paired differences form an ``S x n`` table ``d[s, e]`` (candidate A minus B, seed ``s``, example
``e``), and the quantity of interest is the mean over both.

Seeds and examples are *crossed*, not nested: every seed is scored on the same questions, so an
example that is hard for A is hard in every seed. The bootstrap therefore draws seeds with
replacement, then one set of examples with replacement that every drawn seed uses (drawing examples
afresh inside each seed would treat each seed's questions as new ones and understate the examples'
share of the variance by a factor ``S``). Each draw is a pair of weight vectors (how often each seed,
how often each example was drawn), so a mean is ``w_seed @ d @ w_example`` and a ratio (bits per byte)
is the ratio of the same weighted sums of its numerators and denominators: paired by example, as in
:func:`~layerswap.stats.paired_ratio_difference`.

The example-only interval uses the very same example draws with the seeds held fixed (each counted
once): with one seed it is the paired percentile bootstrap over examples of
:func:`~layerswap.stats.paired_difference`. With one seed the between-seed variance cannot be
estimated: the seed-inclusive interval is NaN and :attr:`SeedInterval.note` says so. With few seeds
(3) the bootstrap over seeds understates it (its variance is ``(S-1)/S`` of the usual estimate and 3
seeds give 10 distinct draws): a lower bound, reported beside the per-seed differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layerswap.stats import NAN

__all__ = ["SeedInterval", "coverage_simulation", "seed_interval", "two_level_bootstrap"]

#: Resamples per batch (bounds memory: a batch holds ``batch x (S + n)`` weights).
_BATCH = 500
ONE_SEED = "one seed: between-seed variance cannot be estimated (retrain with seeds >= 2)"


@dataclass(frozen=True)
class SeedInterval:
    """A minus B over seeds and examples, with the example-only and the seed-inclusive interval."""

    diff: float
    example_low: float
    example_high: float
    seed_low: float
    seed_high: float
    seeds: int
    n: int
    #: The difference within each seed (over the same examples), in seed order.
    per_seed: tuple[float, ...]
    #: Standard deviation of ``per_seed`` (NaN with one seed).
    between_seed_sd: float
    note: str = ""


def _counts(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """``k`` bootstrap draws of ``size`` items as weights: row ``b`` counts how often each item was drawn, / size."""
    picks = rng.integers(0, size, (k, size))
    counts = np.zeros((k, size))
    np.add.at(counts, (np.arange(k)[:, None], picks), 1.0)
    return counts / size


def _expand(table: np.ndarray) -> np.ndarray:
    """Each seed's deviation from the example's mean over seeds scaled by ``sqrt(S / (S - 1))``.

    Drawing ``S`` seeds from ``S`` gives a variance ``(S - 1) / S`` of the unbiased one (2/3 with 3
    seeds); expanding the deviations undoes that (Davison & Hinkley 1997, section 3.8, for two-stage
    data). The mean over seeds of every example, hence the example-only interval, is unchanged.
    """
    s = table.shape[0]
    centre = table.mean(axis=0, keepdims=True)
    return centre + math.sqrt(s / (s - 1)) * (table - centre)


def _stat(w_seed: np.ndarray, w_ex: np.ndarray, tables: tuple[np.ndarray, ...]) -> np.ndarray:
    """Per resample: the weighted mean of ``d`` or, with four tables, the difference of weighted ratios."""

    def wsum(t: np.ndarray) -> np.ndarray:
        return np.einsum("bs,se,be->b", w_seed, t, w_ex)

    if len(tables) == 1:
        return wsum(tables[0])
    na, da, nb, db = tables
    return wsum(na) / wsum(da) - wsum(nb) / wsum(db)


def two_level_bootstrap(
    *tables: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile intervals (example-only, seed-inclusive) of a statistic of ``S x n`` tables.

    One table: the paired differences ``d[s, e]``, statistic their mean. Four tables: numerators and
    denominators of A and of B (bits and bytes per seed and sentence), statistic the difference of the
    two pooled ratios. Both intervals share the example draws (fixed ``seed``); the seed-inclusive one
    also draws seeds, from tables whose seed deviations are expanded (:func:`_expand`). With one seed
both are the example-only interval.
    """
    arrays = tuple(np.asarray(t, dtype=np.float64) for t in tables)
    if len(arrays) not in (1, 4) or arrays[0].ndim != 2 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError("two_level_bootstrap takes one S x n table of differences, or four of ratio parts, all the same shape")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must lie strictly between 0 and 1")
    n_seeds, n = arrays[0].shape
    if n < 2:
        return (NAN, NAN), (NAN, NAN)
    expanded = tuple(_expand(a) for a in arrays) if n_seeds > 1 else arrays
    rng = np.random.default_rng(seed)
    fixed = np.full((1, n_seeds), 1.0 / n_seeds)
    example_only, seed_inclusive = [], []
    for start in range(0, n_resamples, _BATCH):
        k = min(_BATCH, n_resamples - start)
        w_ex = _counts(rng, n, k)
        w_seed = _counts(rng, n_seeds, k)
        example_only.append(_stat(np.repeat(fixed, k, axis=0), w_ex, arrays))
        seed_inclusive.append(_stat(w_seed, w_ex, expanded))
    tail = 100 * (1 - confidence) / 2

    def percentile(draws: list[np.ndarray]) -> tuple[float, float]:
        values = np.concatenate(draws)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return NAN, NAN
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    return percentile(example_only), percentile(seed_inclusive)


def seed_interval(
    *tables: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> SeedInterval:
    """:func:`two_level_bootstrap` with the observed difference, each seed's difference and a note;
    with one seed the seed-inclusive interval is NaN (nothing to resample) and the note says why."""
    arrays = tuple(np.asarray(t, dtype=np.float64) for t in tables)
    (el, eh), (sl, sh) = two_level_bootstrap(*arrays, confidence=confidence, n_resamples=n_resamples, seed=seed)
    n_seeds, n = arrays[0].shape
    if len(arrays) == 1:
        per_seed = arrays[0].mean(axis=1) if n else np.full(n_seeds, NAN)
        diff = float(arrays[0].mean()) if n else NAN
    else:
        na, da, nb, db = arrays
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = na.sum(1) / da.sum(1) - nb.sum(1) / db.sum(1)
            diff = float(na.sum() / da.sum() - nb.sum() / db.sum()) if n else NAN
    note = "" if n >= 2 else f"{n} example(s): no interval"
    if n_seeds < 2:
        sl = sh = NAN
        note = note or ONE_SEED
    sd = float(np.std(per_seed, ddof=1)) if n_seeds >= 2 else NAN
    return SeedInterval(
        diff=diff,
        example_low=el,
        example_high=eh,
        seed_low=sl,
        seed_high=sh,
        seeds=int(n_seeds),
        n=int(n),
        per_seed=tuple(float(v) for v in per_seed),
        between_seed_sd=sd if math.isfinite(sd) else NAN,
        note=note,
    )


def coverage_simulation(
    seeds: int, *, examples: int = 30, runs: int = 300, seed_sd: float = 1.0, example_sd: float = 0.5, noise_sd: float = 1.0,
    true_diff: float = 0.2, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
) -> dict[str, float]:
    """How often each interval covers the true difference on planted tables
    ``d[s, e] = true_diff + seed effect + example effect + noise`` (normal, the given sds), and their mean widths.

    The numbers docs/sweep.md quotes ("Seeds as a source of uncertainty") come from this function.
    """
    rng = np.random.default_rng(seed)
    hits = np.zeros(2)
    widths = np.zeros(2)
    for run in range(runs):
        d = (
            true_diff
            + rng.normal(0, seed_sd, (seeds, 1))
            + rng.normal(0, example_sd, (1, examples))
            + rng.normal(0, noise_sd, (seeds, examples))
        )
        intervals = two_level_bootstrap(d, confidence=confidence, n_resamples=n_resamples, seed=run)
        for i, (low, high) in enumerate(intervals):
            hits[i] += low <= true_diff <= high
            widths[i] += high - low
    return {
        "example_only_coverage": hits[0] / runs,
        "seed_inclusive_coverage": hits[1] / runs,
        "example_only_width": widths[0] / runs,
        "seed_inclusive_width": widths[1] / runs,
    }
