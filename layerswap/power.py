"""How many paired examples a verdict needs: sample sizes and power for the sweep's paired tests.

A report that says "indistinguishable" should also say whether buying more evaluation could change
that: :func:`examples_needed` gives the number of examples at which the observed difference would
be detected with 80% power at the comparison's level (McNemar's for 0/1 scores, the paired t
approximation otherwise); :func:`paired_binary_n` and :func:`mcnemar_power` are McNemar's sample
size (normal approximation) and the exact power of the exact test.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from layerswap.stats import NAN, Scores, _array, _same_length, is_binary

__all__ = ["examples_needed", "mcnemar_power", "paired_binary_n"]


def paired_binary_n(delta: float, discordance: float, *, power: float = 0.8, alpha: float = 0.05,
                    exact: bool = False) -> int:
    """Examples needed for McNemar's test to detect an accuracy difference ``delta`` (two-sided).

    ``discordance`` is the share of examples the two systems score differently (``p01 + p10``);
    ``delta = p10 - p01`` must not exceed it. Connor's (1987) normal approximation:
    ``n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2``, rounded up.
    ``exact=True``: the smallest n from there up at which the exact test (:func:`mcnemar`) reaches
    ``power`` by :func:`mcnemar_power` (a few percent more: the exact test is conservative).
    """
    delta = abs(float(delta))
    if not 0.0 < delta <= discordance <= 1.0:
        raise ValueError(f"need 0 < delta <= discordance <= 1, got delta={delta}, discordance={discordance}")
    za, zb = _st.norm.ppf(1.0 - alpha / 2.0), _st.norm.ppf(power)
    n = int(math.ceil((za * math.sqrt(discordance) + zb * math.sqrt(discordance - delta * delta)) ** 2 / (delta * delta)))
    while exact and mcnemar_power(n, delta, discordance, alpha=alpha) < power:
        n += 1
    return n


def mcnemar_power(n: int, delta: float, discordance: float, *, alpha: float = 0.05) -> float:
    """Exact power of the exact two-sided McNemar test (:func:`mcnemar`) on ``n`` paired examples.

    The two systems disagree on each example with probability ``discordance`` and A is the one
    right with probability ``(discordance + delta) / 2``. Summed exactly over the number of
    discordant examples ``m ~ Binomial(n, discordance)``: the probability that the split of the
    ``m`` rejects at ``alpha`` (no simulation, so the figures in the docs are reproducible).
    """
    delta = abs(float(delta))
    if not 0.0 <= delta <= discordance <= 1.0:
        raise ValueError(f"need 0 <= delta <= discordance <= 1, got delta={delta}, discordance={discordance}")
    m = np.arange(1, int(n) + 1)
    q = (discordance + delta) / (2.0 * discordance)
    # Largest k with P(K <= k | Binom(m, 1/2)) <= alpha/2: the lower critical value (symmetric upper one).
    low = _st.binom.ppf(alpha / 2.0, m, 0.5)
    low = np.where(_st.binom.cdf(low, m, 0.5) <= alpha / 2.0, low, low - 1)
    reject = _st.binom.cdf(low, m, q) + _st.binom.sf(m - low - 1, m, q)
    weights = _st.binom.pmf(m, int(n), discordance)
    return float(np.sum(weights * np.where(low >= 0, reject, 0.0)))


def examples_needed(a: Scores, b: Scores, *, level: float = 0.05, power: float = 0.8) -> float:
    """Examples at which the observed mean difference of ``a - b`` would be detected with ``power``.

    0/1 scores: McNemar's sample size from the observed difference and discordance
    (:func:`paired_binary_n`); other scores: the paired t approximation
    ``n = ((t_{1-level/2, n-1} + t_{power, n-1}) * sd(d) / |mean(d)|)^2`` solved by iteration.
    ``inf`` when the observed difference is 0 (no sample size detects it); NaN with under 2 examples.
    """
    x, y = _array(a, "a"), _array(b, "b")
    _same_length(x, y)
    if x.size < 2:
        return NAN
    d = x - y
    delta = float(d.mean())
    if delta == 0.0:
        return math.inf
    if is_binary(x) and is_binary(y):
        discordance = float(np.mean(d != 0))
        return float(paired_binary_n(delta, discordance, power=power, alpha=level))
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 2.0
    n = ((_st.norm.ppf(1.0 - level / 2.0) + _st.norm.ppf(power)) * sd / abs(delta)) ** 2
    for _ in range(20):
        df = max(1.0, n - 1.0)
        n_next = ((_st.t.ppf(1.0 - level / 2.0, df) + _st.t.ppf(power, df)) * sd / abs(delta)) ** 2
        if abs(n_next - n) < 1e-6:
            break
        n = n_next
    return float(max(2, math.ceil(n)))
