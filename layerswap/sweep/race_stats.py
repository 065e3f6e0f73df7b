"""The statistics of one round of the halving race (:func:`layerswap.sweep.halving.decide` reads them).

- :func:`aligned`: the examples every candidate of the round has, as one examples x candidates matrix
  (the comparisons stay paired);
- :func:`paired_bound`: a candidate's one-sided upper bound against the leader (Student's t, the exact
  sign test when every difference is equal);
- :func:`closest_pair`: of the survivors, the pair that the fewest examples would separate, by
  :func:`layerswap.power.examples_needed` (80% power, the paired t approximation or McNemar's for 0/1
  scores: the computation the report's "examples needed" uses). When even that pair needs more than
  ``max_examples`` per language, no further round can be expected to separate the survivors and the
  race stops (:data:`~layerswap.sweep.race.NO_SEPARATION`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: The power at which the race asks whether more examples could separate its survivors.
POWER = 0.8


def paired_bound(d: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Mean, standard error, one-sided upper bound at ``1 - level`` and the one-sided p-value of ``mean(d) >= 0``."""
    from scipy import stats

    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0.0:
        # Every difference equal: Student's t is degenerate (p = 0 after two 0/1 examples). The exact
        # sign test instead: n equal negative differences happen with probability 0.5**n under no
        # difference; the bound is only finite (and below zero) where that p clears the level.
        if mean < 0:
            p = 0.5**n
            return mean, 0.0, (mean if p < level else math.nan), p
        return mean, 0.0, math.nan, (0.5 if mean == 0 else 1.0)
    return mean, se, mean + float(stats.t.ppf(1.0 - level, n - 1)) * se, float(stats.t.cdf(mean / se, n - 1))


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


def closest_pair(matrix: np.ndarray, names: Sequence[str], columns: Sequence[int], *, level: float, languages: int) -> dict | None:
    """Of the candidates ``columns`` of ``matrix`` (examples x candidates, finite), the pair whose observed
    mean difference the fewest examples would detect with :data:`POWER` at two-sided ``level``:
    ``{"a", "b", "diff", "needed"}`` with ``needed`` per language (``inf``: no observed difference).
    None with fewer than two candidates or two examples (nothing to judge)."""
    from layerswap.power import examples_needed

    if len(columns) < 2 or matrix.shape[0] < 2:
        return None
    best: dict | None = None
    for k, i in enumerate(columns):
        for j in columns[k + 1 :]:
            needed = examples_needed(matrix[:, i], matrix[:, j], level=level, power=POWER)
            if needed != needed:
                continue
            per_lang = needed if math.isinf(needed) else float(math.ceil(needed / max(1, languages)))
            if best is None or per_lang < best["needed"]:
                best = {"a": names[i], "b": names[j], "diff": float((matrix[:, i] - matrix[:, j]).mean()), "needed": per_lang}
    return best
