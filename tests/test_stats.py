"""layerswap.stats: known answers (by hand or by an independent computation), seeded coverage
simulations, and paired vs unpaired intervals on correlated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from layerswap import power, stats

# --- known answers -------------------------------------------------------------------------------


def test_mean_stderr_by_hand():
    # mean 0.75; squared deviations 3 * 0.0625 + 0.5625 = 0.75, / (n - 1) = 0.25, sd 0.5, / sqrt(4) = 0.25
    assert stats.mean_stderr([1, 0, 1, 1]) == pytest.approx((0.75, 0.25))
    est = stats.mean_estimate([1.5, 0.5, 1.5, 1.5])  # not 0/1: the normal interval
    assert (est.value, est.stderr, est.n) == (1.25, 0.25, 4)
    assert est.low == pytest.approx(1.25 - 1.959964 * 0.25) and est.high == pytest.approx(1.25 + 1.959964 * 0.25)
    assert stats.mean_stderr([3.0])[0] == 3.0 and math.isnan(stats.mean_stderr([3.0])[1])
    assert all(math.isnan(v) for v in stats.mean_stderr([]))
    assert stats.mean_stderr([True, False]) == pytest.approx((0.5, 0.5))  # sd sqrt(0.5) / sqrt(2)


def test_mcnemar_by_hand():
    # 8 examples only A gets right, 2 only B, 5 both, 5 neither: p = 2 * P(Binom(10, 1/2) <= 2)
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    assert stats.mcnemar(a, b) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert stats.mcnemar(b, a) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert stats.mcnemar([1, 0, 1], [1, 0, 1]) == 1.0  # no discordant pair
    assert stats.mcnemar([1, 1, 1, 1, 1, 1], [0] * 6) == pytest.approx(2 / 64)
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar([0.5, 1], [1, 0])
    with pytest.raises(ValueError, match="same examples"):
        stats.mcnemar([1, 0], [1])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, 3*0.03, max(2*0.04, 0.09), max(0.5, 0.09)
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    out = stats.holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])
    assert stats.holm([]) == []


def test_paired_difference_binary_uses_mcnemar():
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    res = stats.paired_difference(a, b)
    assert res.test == "mcnemar" and res.n == 20
    assert res.diff == pytest.approx(0.3) and res.p_value == pytest.approx(112 / 1024)
    assert res.low < 0.3 < res.high
    same = stats.paired_difference([1, 0, 1], [1, 0, 1])
    assert (same.diff, same.p_value) == (0.0, 1.0) and same.low < 0 < same.high  # agreement on 3 examples proves little


def test_wilson_interval_by_hand():
    # 0/1 scores: Wilson's score interval, centre (p + z^2/2n) / (1 + z^2/n), half-width z/(1 + z^2/n) sqrt(p(1-p)/n + z^2/4n^2)
    z = 1.959964
    for k, n in ((3, 4), (0, 12), (12, 12), (57, 168)):
        p = k / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        est = stats.mean_estimate([1] * k + [0] * (n - k))
        assert (est.low, est.high) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-6), (k, n)
        assert est.stderr == pytest.approx(stats.mean_stderr([1] * k + [0] * (n - k))[1], nan_ok=True)  # lm-eval's stderr kept
    none = stats.mean_estimate([0] * 12)  # the normal interval would say [0, 0]
    assert none.low == 0.0 and none.high == pytest.approx(z * z / (12 + z * z), abs=1e-6)


def test_paired_binary_interval_newcombe():
    # No discordant example: never a point, whether nobody is right or half are (method 10 gave [0, 0] there).
    nobody = stats.paired_binary_interval([0] * 12, [0] * 12)
    half = stats.paired_binary_interval([1] * 6 + [0] * 6, [1] * 6 + [0] * 6)
    assert nobody[0] < -0.2 and nobody[1] > 0.2 and half[0] < -0.1 and half[1] > 0.1
    assert nobody[0] == pytest.approx(-nobody[1]) and half[0] == pytest.approx(-half[1])
    # By hand (Newcombe 1998, method 11) for 8 only-A, 2 only-B, 5 both, 5 neither: continuity-corrected
    # Wilson bounds of 13/20 and 7/20 (the textbook closed form) and phi with ad - bc shrunk by n/2.
    z, n = 1.959964, 20

    def wilson_cc(k):
        p = k / n
        lo = (2 * n * p + z * z - 1 - z * math.sqrt(z * z - 2 - 1 / n + 4 * p * (n * (1 - p) + 1))) / (2 * (n + z * z))
        hi = (2 * n * p + z * z + 1 + z * math.sqrt(z * z + 2 - 1 / n + 4 * p * (n * (1 - p) - 1))) / (2 * (n + z * z))
        return max(0.0, lo), min(1.0, hi)

    (l1, u1), (l2, u2) = wilson_cc(13), wilson_cc(7)
    phi = max(5 * 5 - 8 * 2 - n / 2, 0.0) / math.sqrt(13 * 7 * 7 * 13)  # ad - bc = 9 shrunk by n/2 = 10: phi = 0
    p1, p2 = 0.65, 0.35
    want_low = 0.3 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    want_high = 0.3 + math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    a = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 5
    assert stats.paired_binary_interval(a, b) == pytest.approx((want_low, want_high), abs=1e-6)
    assert stats.paired_binary_interval(b, a) == pytest.approx((-want_high, -want_low), abs=1e-6)  # orientation
    rng = np.random.default_rng(3)  # coverage at a small n: at least nominal (the correction is conservative)
    hits = 0
    for _ in range(400):
        x = (rng.random(30) < 0.4).astype(float)
        y = np.where(rng.random(30) < 0.8, x, 1 - x)  # true difference 0.4 - (0.32 + 0.12) = -0.04
        lo, hi = stats.paired_binary_interval(x, y)
        hits += lo <= -0.04 <= hi
    assert 0.93 <= hits / 400


def test_paired_permutation_exact_by_hand():
    # Six positive differences: of the 2**6 sign flips only all-plus and all-minus reach |mean| 3.5.
    a = np.array([2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    res = stats.paired_difference(a, a / 2)
    assert res.test == "permutation" and res.diff == pytest.approx(3.5)
    assert res.p_value == pytest.approx(2 / 64)
    assert stats.paired_difference([0.5, 1.0], [0.5, 1.0]).p_value == 1.0
    assert stats.paired_difference([1, 0, 1], [0, 0, 1], binary=False).test == "permutation"


def test_bootstrap_ci_matches_an_independent_bootstrap_and_the_normal_interval():
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 2.0, size=400)
    low, high = stats.bootstrap_ci(x, n_resamples=4000)
    # An independent percentile bootstrap written with numpy (another generator, more resamples).
    means = x[np.random.default_rng(99).integers(0, x.size, size=(20000, x.size))].mean(axis=1)
    ref = np.quantile(means, [0.025, 0.975])
    assert low == pytest.approx(ref[0], abs=0.03) and high == pytest.approx(ref[1], abs=0.03)
    est = stats.mean_estimate(x)  # for a mean of 400 draws the normal interval agrees closely
    assert low == pytest.approx(est.low, abs=0.05) and high == pytest.approx(est.high, abs=0.05)
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)  # fixed seed
    assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=2)
    med = stats.bootstrap_ci(x, np.median)
    assert med[0] < np.median(x) < med[1]
    assert stats.bootstrap_ci(x, lambda v: float(np.mean(v))) == pytest.approx((low, high), abs=0.05)  # no axis
    assert stats.bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))


def test_ratio_estimate_against_the_delta_method():
    rng = np.random.default_rng(3)
    den = rng.integers(40, 200, size=300).astype(float)
    num = den * rng.normal(1.2, 0.3, size=300)
    est = stats.ratio_estimate(num, den)
    r = num.sum() / den.sum()
    assert est.value == pytest.approx(r) and est.n == 300
    # Delta method (independent, closed form): var(R) ~ sum((num - R den)^2) / (n (n-1)) / mean(den)^2
    resid = num - r * den
    se = math.sqrt((resid**2).sum() / (300 * 299)) / den.mean()
    assert est.stderr == pytest.approx(se, rel=0.1)
    assert est.low == pytest.approx(r - 1.96 * se, abs=se * 0.3) and est.high == pytest.approx(r + 1.96 * se, abs=se * 0.3)
    assert stats.ratio_estimate(num, den) == est
    with pytest.raises(ValueError, match="one of each"):
        stats.ratio_estimate([1.0, 2.0], [1.0])
    assert math.isnan(stats.ratio_estimate([], []).value)
    assert stats.ratio_estimate([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == stats.Estimate(2.0, 0.0, 2.0, 2.0, 3)
    one = stats.ratio_estimate([3.0], [2.0])
    assert one.value == 1.5 and math.isnan(one.stderr) and one.n == 1


def test_spearman_ci():
    x = np.arange(10.0)
    rho, low, high = stats.spearman_ci(x, x**2)
    assert (rho, low, high) == pytest.approx((1.0, 1.0, 1.0))  # every resample of a monotone relation is monotone
    rng = np.random.default_rng(0)
    u = rng.normal(size=40)
    v = u + rng.normal(size=40)
    rho, low, high = stats.spearman_ci(u, v)
    assert rho == pytest.approx(st.spearmanr(u, v).statistic) and low < rho < high
    rho4, low4, high4 = stats.spearman_ci([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho4 == pytest.approx(0.8) and low4 < 0.8 <= high4  # four pairs: a very wide interval
    assert all(math.isnan(v) for v in stats.spearman_ci([1, 1, 1], [1, 2, 3]))


def test_paired_ratio_difference():
    rng = np.random.default_rng(5)
    den = rng.integers(40, 200, size=200).astype(float)
    bits_a = den * rng.normal(1.2, 0.3, size=200)
    bits_b = bits_a * 1.03 + rng.normal(0, 2, size=200)  # B is 3% worse on each example
    res = stats.paired_ratio_difference(bits_b, den, bits_a, den)
    assert res.diff == pytest.approx(bits_b.sum() / den.sum() - bits_a.sum() / den.sum())
    assert 0 < res.low < res.diff < res.high and res.p_value < 0.001 and res.test == "permutation"
    same = stats.paired_ratio_difference(bits_a, den, bits_a, den)
    assert same.diff == 0.0 and same.p_value == 1.0
    # a null case: B is A with the examples' roles swapped at random -> p is not small
    swap = rng.random(200) < 0.5
    noise_a, noise_b = bits_a + rng.normal(0, 5, 200), bits_a + rng.normal(0, 5, 200)
    null = stats.paired_ratio_difference(np.where(swap, noise_a, noise_b), den, np.where(swap, noise_b, noise_a), den)
    assert null.low < 0 < null.high


def test_paired_binary_n_by_hand_and_by_simulation():
    # delta 0.1 at discordance 0.2: (1.95996 sqrt(.2) + 0.84162 sqrt(.19))^2 / .01 = 154.6 -> 155
    assert power.paired_binary_n(0.10, 0.20) == 155
    assert power.paired_binary_n(0.02, 0.20) > power.paired_binary_n(0.05, 0.20) > 155
    with pytest.raises(ValueError):
        power.paired_binary_n(0.3, 0.2)
    # The exact McNemar test at that n detects the difference in about 80% of seeded draws.
    rng = np.random.default_rng(11)
    n, p10, p01 = 155, 0.15, 0.05
    draws = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=1500)
    hits = sum(st.binomtest(int(x), int(x + y), 0.5).pvalue < 0.05 for x, y, _ in draws if x + y)
    assert 0.72 < hits / 1500 < 0.86
    # ... and mcnemar_power computes that probability exactly (0.762: the exact test is conservative)
    assert power.mcnemar_power(n, 0.10, 0.20) == pytest.approx(hits / 1500, abs=0.03)
    assert power.mcnemar_power(n, 0.10, 0.20) < 0.8 <= power.mcnemar_power(power.paired_binary_n(0.1, 0.2, exact=True), 0.1, 0.2)
    assert power.paired_binary_n(0.1, 0.2, exact=True) == 168
    assert power.mcnemar_power(50, 0.0, 0.2) <= 0.05  # no difference: the size, at most alpha


# --- coverage ------------------------------------------------------------------------------------


def test_mean_interval_covers_about_95_percent():
    rng = np.random.default_rng(2024)
    p, n, draws = 0.4, 250, 2000
    covered = 0
    for _ in range(draws):
        est = stats.mean_estimate((rng.random(n) < p).astype(float))
        covered += est.low <= p <= est.high
    assert 0.93 <= covered / draws <= 0.97


def test_bootstrap_and_paired_intervals_cover_about_95_percent():
    rng = np.random.default_rng(42)
    draws, n = 300, 120
    boot = paired = ratio = 0
    for i in range(draws):
        x = rng.exponential(2.0, size=n)  # skewed scores, true mean 2
        lo, hi = stats.bootstrap_ci(x, n_resamples=1000, seed=i)
        boot += lo <= 2.0 <= hi
        # paired 0/1 scores: A right with p 0.6, B agrees with A 80% of the time -> true diff 0.6-(0.6*.8+.4*.2)=0.04
        a = (rng.random(n) < 0.6).astype(float)
        b = np.where(rng.random(n) < 0.8, a, 1 - a)
        res = stats.paired_difference(a, b, n_resamples=1000, seed=i)
        paired += res.low <= 0.04 <= res.high
        den = rng.integers(20, 100, size=n).astype(float)
        est = stats.ratio_estimate(den * rng.gamma(4.0, 0.25, size=n), den, n_resamples=1000, seed=i)  # true ratio 1
        ratio += est.low <= 1.0 <= est.high
    for name, hits in (("bootstrap", boot), ("paired", paired), ("ratio", ratio)):
        assert 0.90 <= hits / draws <= 0.99, (name, hits / draws)


def test_paired_interval_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(8)
    n = 250
    a = (rng.random(n) < 0.5).astype(float)
    b = np.where(rng.random(n) < 0.9, a, 1 - a)  # two merges that agree on 90% of the questions
    paired = stats.paired_difference(a, b)
    diff, low, high = stats.unpaired_difference(a, b)
    assert paired.diff == pytest.approx(diff)
    assert (paired.high - paired.low) < 0.6 * (high - low)
    x = rng.normal(size=n)  # continuous scores sharing a per-example difficulty
    y = x + rng.normal(0.1, 0.3, size=n)
    p = stats.paired_difference(y, x)
    _, ulow, uhigh = stats.unpaired_difference(y, x)
    assert (p.high - p.low) < 0.5 * (uhigh - ulow) and p.low > 0 and ulow < 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        stats.mean_stderr([1.0, float("nan")])
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_estimate([1, 0], confidence=95)
    assert stats.paired_difference([], []).n == 0


def test_one_example_gives_no_p_value_not_an_error():
    # A sweep with limit: 1 compares candidates on a single example: "undetermined", never a traceback.
    p = stats.paired_difference([1.0], [2.0])
    assert p.n == 1 and p.diff == -1.0 and math.isnan(p.p_value)
