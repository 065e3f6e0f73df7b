"""One test per comparison: the verdict and the interval printed beside it can never disagree."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layerswap.paired_tests import family_level, paired_ratio_test, paired_test
from layerswap.power import examples_needed
from layerswap.stats import mcnemar, paired_difference


def _agrees(t) -> bool:
    excluded = t.low > 0.0 or t.high < 0.0
    return excluded == t.reject


@pytest.mark.parametrize("seed", range(40))
def test_verdict_agrees_with_interval_on_random_score_tables(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    level = family_level(0.05, int(rng.integers(1, 12)))
    kind = seed % 4
    if kind == 0:  # log-likelihood-like, with a planted shift of random size
        a = rng.normal(rng.normal(0, 0.5), 1.0, n)
        b = rng.normal(0.0, 1.0, n)
    elif kind == 1:  # heavy ties, as rounded scores give
        a = np.round(rng.normal(0.2, 1.0, n))
        b = np.round(rng.normal(0.0, 1.0, n))
    elif kind == 2:  # exact match
        a = (rng.random(n) < rng.random()).astype(float)
        b = (rng.random(n) < rng.random()).astype(float)
    else:
        num_a, den_a = rng.uniform(1, 3, n), rng.integers(1, 50, n).astype(float)
        num_b = num_a * rng.normal(1.0, 0.1, n)
        t = paired_ratio_test(num_a, den_a, num_b, den_a, level=level, seed=seed)
        assert _agrees(t), t
        return
    t = paired_test(a, b, level=level, seed=seed)
    assert t.low <= t.diff <= t.high or t.test == "newcombe", t
    assert _agrees(t), t


def test_the_permutation_p_value_is_the_usual_one_and_exact_for_small_n():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.5, 1, 12), rng.normal(0, 1, 12)
    ours = paired_test(a, b)
    theirs = paired_difference(a, b, n_permutations=10**6)  # scipy enumerates 2**12 exactly
    assert ours.p_value == pytest.approx(theirs.p_value, abs=1e-12)


def test_the_interval_is_the_set_of_shifts_the_test_does_not_reject():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.8, 1, 10), rng.normal(0, 1, 10)
    t = paired_test(a, b, level=0.05)
    for delta, inside in ((t.low - 1e-6, False), (t.low + 1e-6, True), (t.high - 1e-6, True), (t.high + 1e-6, False)):
        shifted = paired_test(a - delta, b, level=0.05)
        assert (not shifted.reject) == inside, (delta, shifted)


def test_few_examples_cannot_exclude_anything_at_a_strict_level():
    # 6 examples: the smallest exact two-sided p is 2/64; at 0.05/10 no shift can be rejected.
    a, b = np.array([3.0, 2.5, 4.0, 3.3, 2.9, 3.1]), np.zeros(6)
    t = paired_test(a, b, level=family_level(0.05, 10))
    assert not t.reject and math.isinf(t.low) and math.isinf(t.high)
    t = paired_test(a, b, level=0.05)
    assert t.reject and t.low > 0 and t.p_value == pytest.approx(2 / 64)


def test_binary_scores_use_newcombe_as_the_test():
    a = np.r_[np.ones(12), np.zeros(18)]
    b = np.r_[np.ones(2), np.zeros(28)]
    t = paired_test(a, b, level=0.05)
    assert t.test == "newcombe" and t.reject and t.low > 0
    same = paired_test(a, a, level=0.05)
    assert not same.reject and same.low < 0 < same.high
    assert mcnemar(a, b) < 0.05  # the usual test agrees on a clear case


def test_examples_needed_shrinks_with_the_effect():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 1, 40)
    small = examples_needed(b + 0.1 + rng.normal(0, 1, 40) * 0.3, b)
    large = examples_needed(b + 0.5 + rng.normal(0, 1, 40) * 0.3, b)
    assert large < small
    assert examples_needed(b, b) == math.inf
    a01 = np.r_[np.ones(10), np.zeros(30)]
    b01 = np.r_[np.ones(5), np.zeros(35)]
    assert examples_needed(a01, b01) > 40  # 5 of 40 discordant, all one way: McNemar's sample size
