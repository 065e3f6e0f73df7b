"""The statistics of one round of the halving race (:func:`layerswap.sweep.halving.decide` reads them).

- :func:`aligned`: the examples every candidate of the round has, as one examples x candidates matrix
  (the comparisons stay paired);
- :func:`paired_bound`: a candidate's one-sided upper bound against the leader. 0/1 scores (both
  candidates' scores all 0 or 1): the exact sign test on the discordant examples (McNemar's exact test,
  one-sided) and its Clopper-Pearson bound; Student's t on 0/1 differences is anti-conservative at the
  race's small levels (in the simulation it named a wrong winner in 7 of 50 tied sweeps). Other scores:
  Student's t (the exact sign test when every difference is equal);
- :func:`closest_pair`: of the survivors, the pair that the fewest examples would separate, by
  :func:`layerswap.power.examples_needed` (80% power; the computation the report's "examples needed"
  uses) applied to an *optimistic* difference: the observed mean difference moved away from 0 by
  :data:`OPTIMISM` standard errors. When even that pair needs more than ``max_examples`` per language,
  no further round can be expected to separate the survivors and the race stops
  (:data:`~layerswap.sweep.race.NO_SEPARATION`). Judged on the observed difference instead, a noisy
  first round that happens to show a small gap between the best and the runner-up stops the race: in
  the simulation (``benchmarks/bench_verdicts.py``) that halved the power on 0/1 scores (0.40 against
  0.78 without any early stop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: The power at which the race asks whether more examples could separate its survivors.
POWER = 0.8
#: Standard errors by which the observed difference is moved away from 0 before asking how many
#: examples would detect it (the far end of its two-sided 95% interval): a pair is judged hopeless only
#: when even a difference that large would need more than ``max_examples``.
OPTIMISM = 1.96
#: How the race's bound is computed, in the report's words.
RULE = "Student's t on the per-example differences; for 0/1 scores the exact sign test on the discordant examples"


def paired_bound(d: np.ndarray, level: float, *, binary: bool = False) -> tuple[float, float, float, float]:
    """Mean, standard error, one-sided upper bound at ``1 - level`` and the one-sided p-value of ``mean(d) >= 0``.

    ``binary``: ``d`` is the difference of two 0/1 score vectors (see :func:`binary_bound`)."""
    from scipy import stats

    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = float(d.std(ddof=1) / math.sqrt(n))
    if binary:
        return (mean, se, *binary_bound(int(np.sum(d > 0)), int(np.sum(d < 0)), n, level))
    if se == 0.0:
        # Every difference equal: Student's t is degenerate (p = 0 after two 0/1 examples). The exact
        # sign test instead: n equal negative differences happen with probability 0.5**n under no
        # difference; the bound is only finite (and below zero) where that p clears the level.
        if mean < 0:
            p = 0.5**n
            return mean, 0.0, (mean if p < level else math.nan), p
        return mean, 0.0, math.nan, (0.5 if mean == 0 else 1.0)
    return mean, se, mean + float(stats.t.ppf(1.0 - level, n - 1)) * se, float(stats.t.cdf(mean / se, n - 1))


def binary_bound(wins: int, losses: int, n: int, level: float) -> tuple[float, float]:
    """The exact one-sided bound for paired 0/1 scores: of ``n`` examples, the candidate alone is right on
    ``wins`` and the leader alone on ``losses``. Under no difference each of the ``m = wins + losses``
    discordant examples goes either way with probability 1/2, so ``p = P(Binomial(m, 1/2) <= wins)`` (McNemar's
    exact test, one-sided). The bound is ``(m / n) (2 q - 1)``, ``q`` the one-sided Clopper-Pearson upper
    bound at ``1 - level`` of the candidate's share of the discordant examples: below zero exactly when
    ``p < level`` (the same test, inverted). ``(bound, p)``; no discordant example: ``(nan, 1)``."""
    from scipy import stats

    m = wins + losses
    if m == 0:
        return math.nan, 1.0
    p = float(stats.binom.cdf(wins, m, 0.5))
    q = 1.0 if losses == 0 else float(stats.beta.ppf(1.0 - level, wins + 1, losses))
    return (m / n) * (2.0 * q - 1.0), p


def aligned(scores: dict[str, pd.DataFrame], names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """An examples x candidates matrix of the scores every candidate in ``names`` has (by language and id),
    in the first candidate's order."""
    keyed = [
        dict(zip(zip(scores[n]["lang"], scores[n]["id"], strict=True), scores[n]["score"].to_numpy(dtype=np.float64), strict=True))
        for n in names
    ]
    first = scores[names[0]]
    order = [k for k in zip(first["lang"], first["id"], strict=True) if all(k in d for d in keyed[1:])]
    matrix = np.array([[d[k] for d in keyed] for k in order], dtype=np.float64).reshape(len(order), len(names))
    return matrix, [f"{lang}:{i}" for lang, i in order]


def optimistic_needed(x: np.ndarray, y: np.ndarray, *, level: float) -> float:
    """Examples at which a difference :data:`OPTIMISM` standard errors further from 0 than the observed
    ``mean(x - y)`` would be detected with :data:`POWER` at two-sided ``level`` (the paired t
    approximation of :func:`layerswap.power.examples_needed` on the shifted differences).
    NaN where the differences carry no spread (all equal): no basis to judge the pair hopeless."""
    from layerswap.power import examples_needed

    d = x - y
    sd = float(d.std(ddof=1))
    if not sd > 0.0:
        return math.nan
    mean = float(d.mean())
    shifted = d + math.copysign(OPTIMISM * sd / math.sqrt(d.size), mean if mean != 0.0 else 1.0)
    return examples_needed(shifted, np.zeros_like(shifted), level=level, power=POWER)


def closest_pair(matrix: np.ndarray, names: Sequence[str], columns: Sequence[int], *, level: float, languages: int) -> dict | None:
    """Of the candidates ``columns`` of ``matrix`` (examples x candidates, finite), the pair whose
    optimistic difference (:func:`optimistic_needed`) the fewest examples would detect:
    ``{"a", "b", "diff", "needed"}`` with ``diff`` the observed mean difference and ``needed`` per language.
    None with fewer than two candidates or two examples, or when no pair can be judged."""
    if len(columns) < 2 or matrix.shape[0] < 2:
        return None
    best: dict | None = None
    for k, i in enumerate(columns):
        for j in columns[k + 1 :]:
            needed = optimistic_needed(matrix[:, i], matrix[:, j], level=level)
            if needed != needed:
                continue
            per_lang = needed if math.isinf(needed) else float(math.ceil(needed / max(1, languages)))
            if best is None or per_lang < best["needed"]:
                best = {"a": names[i], "b": names[j], "diff": float((matrix[:, i] - matrix[:, j]).mean()), "needed": per_lang}
    return best
