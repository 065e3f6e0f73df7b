"""Swap boundaries from the per-layer shares: the rule, its contrast table, and the candidates.

The rule (also in docs/analysis.md). Let ``s_L(l)`` and ``s_M(l)`` be the language and math
experts' shares of their squared update (or Fisher mass) in layer ``l`` of ``N``, and
``d(l) = s_L(l) - s_M(l)``. Giving the language expert the bottom ``b`` and top ``u`` layers, with
``t`` transition layers (a blend of both) just inside each boundary, scores

    score(b, u, t) = sum over the b + u language layers of (d(l) - tau)  +  1/2 * sum over transition layers of d(l)

because a swapped layer keeps ``s_L(l)`` and loses ``s_M(l)`` and a blended layer keeps half of
each; ``tau = penalty / N`` (default a quarter of a uniform layer's share) charges each language
layer, so a layer is only given to the language expert when its lead is clear, not because noise
tipped ``d`` above zero. The middle keeps at least ``min_middle`` layers (default ``ceil(N/3)``).

The recommendation is the best ``(b, u)`` at ``t = 0``; its transition is the number of
ambiguous layers (``|d| <= tau``) directly inside both boundaries, at most 2. It is trusted
("separation: clear") only when

- the gain ``sum of d over the language layers`` (how much more of the language update than of
  the math update those layers hold) is at least ``min_gain`` (0.10), and
- at least ``min_consistency`` (75%) of the module kinds (q_proj, down_proj, ...) each show a
  positive gain on their own, so the split is not carried by one module's noise.

Otherwise the file says "separation: none" and plainly why, recommends the paper's proportions
(bottom ``5N/32``, top ``2N/32``, as for its 32-layer models) marked ``basis: prior``, and ranks
the candidates around that prior by distance, not by the noisy score: short Adam fine-tunes move
every layer alike and their magnitudes cannot place the boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from layerswap.errors import ConfigError
from layerswap.io.swap_geometry import SwapGeometry


@dataclass(frozen=True)
class BoundaryRule:
    """The knobs of the rule (see module docstring); defaults are the documented ones."""

    penalty: float = 0.25
    min_middle: int | None = None
    min_gain: float = 0.10
    min_consistency: float = 0.75
    max_transition: int = 2
    n_candidates: int = 12

    def middle(self, n: int) -> int:
        return self.min_middle if self.min_middle is not None else max(1, math.ceil(n / 3))


def _shares(cells: pd.DataFrame, expert: str, n: int, module: str | None = None) -> np.ndarray:
    df = cells[cells["expert"] == expert]
    if module is not None:
        df = df[df["module"] == module]
    per_layer = np.zeros(n)
    for layer, value in df.groupby("layer")["sumsq"].sum().items():
        per_layer[int(layer)] = value
    total = per_layer.sum()
    return per_layer / total if total > 0 else np.full(n, np.nan)


def contrast_table(cells: pd.DataFrame, lang: str, math_: str, n: int) -> pd.DataFrame:
    """Per layer: both shares, their difference ``diff = share_lang - share_math``, and its spread over module kinds."""
    s_l, s_m = _shares(cells, lang, n), _shares(cells, math_, n)
    per_module = module_diffs(cells, lang, math_, n)
    diffs = np.array(per_module) if per_module else np.full((1, n), np.nan)
    return pd.DataFrame(
        {
            "layer": np.arange(n),
            "share_lang": s_l,
            "share_math": s_m,
            "diff": s_l - s_m,
            "diff_module_std": diffs.std(axis=0) if per_module else np.nan,
            "diff_module_min": diffs.min(axis=0) if per_module else np.nan,
            "diff_module_max": diffs.max(axis=0) if per_module else np.nan,
        }
    )


def module_diffs(cells: pd.DataFrame, lang: str, math_: str, n: int) -> list[np.ndarray]:
    """Per module kind with shares in both experts: its own per-layer ``share_lang - share_math``."""
    out = []
    for module in sorted(cells["module"].unique()):
        ml, mm = _shares(cells, lang, n, module), _shares(cells, math_, n, module)
        if not (np.isnan(ml).any() or np.isnan(mm).any()):
            out.append(ml - mm)
    return out


def score(d: np.ndarray, b: int, u: int, t: int, tau: float) -> float:
    n, geometry = len(d), SwapGeometry(b, u, t)
    return float(sum(d[i] - tau for i in geometry.outer_layers(n)) + 0.5 * sum(d[i] for i in geometry.transition_layers(n)))


def _valid(n: int, b: int, u: int, t: int, min_middle: int) -> bool:
    """A candidate swaps at least one layer and fits the one swap-geometry rule with the analysis' middle."""
    return b + u >= 1 and SwapGeometry(b, u, t).fits(n, min_middle)


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    parts, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None], strict=True):
        if cur != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(parts)


def recommend(
    contrast: pd.DataFrame, cells: pd.DataFrame, lang: str, math_: str, rule: BoundaryRule = BoundaryRule()
) -> dict[str, Any]:
    """The recommended bottom/top/transition with score and reason, and the ranked ``candidates``."""
    n = len(contrast)
    d = contrast["diff"].to_numpy(dtype=float)
    tau = rule.penalty / n
    min_middle = rule.middle(n)
    head: dict[str, Any] = {"experts": {"lang": lang, "math": math_}, "num_layers": n}
    rule_info = {
        "penalty_per_layer": round(tau, 6),
        "min_middle": min_middle,
        "min_gain": rule.min_gain,
        "min_consistency": rule.min_consistency,
    }
    grid = [
        (b, u, t)
        for b in range(n + 1)
        for u in range(n + 1 - b)
        for t in range(rule.max_transition + 1)
        if _valid(n, b, u, t, min_middle)
    ]
    if not grid:
        raise ConfigError(
            f"no swap boundary fits {n} layers with a middle of at least {min_middle}: lower min_middle or use a deeper model"
        )
    if np.isnan(d).any():
        zero = lang if np.isnan(contrast["share_lang"]).any() else math_
        kind = str(cells.attrs.get("kind", "deltas"))
        what = "update" if kind in ("deltas", "importance") else f"{kind} lens value"
        return _prior(
            head,
            rule_info,
            d,
            tau,
            n,
            min_middle,
            rule,
            f"no clear separation: {zero} has no {what} in the transformer layers, so there are no shares to compare",
        )

    scores = {c: score(d, *c, tau) for c in grid}
    best_b, best_u = max(((b, u) for b, u, t in grid if t == 0), key=lambda c: (scores[(c[0], c[1], 0)], -(c[0] + c[1])))
    outer = SwapGeometry(best_b, best_u).outer_layers(n)
    gain = float(d[outer].sum())
    per_module = module_diffs(cells, lang, math_, n)
    positive = sum(1 for md in per_module if md[outer].sum() > 0)
    consistency = positive / len(per_module) if per_module else 0.0
    measured = {
        "gain": round(gain, 6),
        "module_consistency": round(consistency, 4),
        "modules_agreeing": f"{positive}/{len(per_module)}",
    }
    if gain < rule.min_gain or consistency < rule.min_consistency or scores[(best_b, best_u, 0)] <= 0:
        why = []
        if gain < rule.min_gain:
            why.append(
                f"the best split puts only {gain:.3f} more of {lang}'s share than of {math_}'s into the outer layers (needs {rule.min_gain})"
            )
        if consistency < rule.min_consistency:
            why.append(f"only {positive}/{len(per_module)} module kinds agree on it (needs {rule.min_consistency:.0%})")
        if not why:
            why.append(f"no layer favours {lang} by more than {tau:.4f} of share")
        return _prior(head, rule_info | measured, d, tau, n, min_middle, rule, "no clear separation: " + "; ".join(why))

    t = _ambiguous_transition(d, best_b, best_u, tau, rule.max_transition, n, min_middle)
    s_l = float(contrast["share_lang"].to_numpy()[outer].sum())
    s_m = float(contrast["share_math"].to_numpy()[outer].sum())
    what = {"importance": "importance", "deltas": "update"}.get(
        str(cells.attrs.get("kind", "deltas")), f"{cells.attrs.get('kind')} lens value"
    )
    reason = (
        f"{lang} has {s_l:.0%} of its {what} in layers {_ranges(outer)} against {math_}'s {s_m:.0%} "
        f"(gain {gain:.2f}, {positive}/{len(per_module)} module kinds agree)"
        + (f"; {t} ambiguous layer{'s' if t > 1 else ''} inside each boundary become transition layers" if t else "")
    )
    rec = {"bottom": best_b, "top": best_u, "transition": t, "score": round(scores[(best_b, best_u, t)], 6), "reason": reason}
    ranked = sorted(grid, key=lambda c: (-scores[c], c[0] + c[1], c[2]))
    cands = [(best_b, best_u, t)] + [c for c in ranked if c != (best_b, best_u, t)]
    candidates = [
        {"bottom": b, "top": u, "transition": tt, "score": round(scores[(b, u, tt)], 6)}
        for b, u, tt in cands[: rule.n_candidates]
    ]
    return rec | {"separation": "clear", "basis": "measured"} | head | {"rule": rule_info | measured, "candidates": candidates}


def _ambiguous_transition(d: np.ndarray, b: int, u: int, tau: float, cap: int, n: int, min_middle: int) -> int:
    def run(layers: list[int]) -> int:
        count = 0
        for layer in layers:
            if abs(d[layer]) > tau or count >= cap:
                break
            count += 1
        return count

    sides = []
    if b > 0:
        sides.append(run(list(range(b, n - u))))
    if u > 0:
        sides.append(run(list(range(n - u - 1, b - 1, -1))))
    t = min(sides) if sides else 0
    while t > 0 and not _valid(n, b, u, t, min_middle):
        t -= 1
    return t


def _prior(
    head: dict, rule_info: dict, d: np.ndarray, tau: float, n: int, min_middle: int, rule: BoundaryRule, reason: str
) -> dict[str, Any]:
    """The paper's proportions (5/32 bottom, 2/32 top) when the data cannot place the boundaries."""
    b0 = max(1, round(5 * n / 32))
    u0 = max(1, round(2 * n / 32))
    while not _valid(n, b0, u0, 0, min_middle) and b0 + u0 > 1:
        b0, u0 = (b0 - 1, u0) if b0 >= u0 else (b0, u0 - 1)
    finite = not np.isnan(d).any()

    def sc(b: int, u: int, t: int) -> float | None:
        return round(score(d, b, u, t, tau), 6) if finite else None

    near = [
        (b, u, t)
        for b in range(max(0, b0 - 2), b0 + 3)
        for u in range(max(0, u0 - 1), u0 + 2)
        for t in range(min(1, rule.max_transition) + 1)
        if _valid(n, b, u, t, min_middle)
    ]
    near.sort(key=lambda c: (abs(c[0] - b0) + abs(c[1] - u0) + c[2], c[2], c[0] + c[1], c))
    rec = {
        "bottom": b0,
        "top": u0,
        "transition": 0,
        "score": sc(b0, u0, 0),
        "reason": reason
        + f"; bottom={b0}, top={u0} are the paper's proportions (5/32, 2/32 of {n} layers), not a measurement: sweep the candidates",
    }
    candidates = [{"bottom": b, "top": u, "transition": t, "score": sc(b, u, t)} for b, u, t in near[: rule.n_candidates]]
    return rec | {"separation": "none", "basis": "prior"} | head | {"rule": rule_info, "candidates": candidates}
