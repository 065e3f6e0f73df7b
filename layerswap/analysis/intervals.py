"""How sure the analysis' lenses are: each against chance, and two analyses against each other.

The analysis tables (``analyze`` or ``importance`` output folders) give point values: a Jaccard
ratio, a cosine, a per-layer contrast. Before a researcher reads "the experts' deltas separate"
or "importance points where the experts changed" into them, each needs an interval:

- :func:`overlap_vs_chance`: the total top-k% overlap against independent random sets of the same
  sizes (the overlap count is then hypergeometric: ``scipy.stats.hypergeom``), with the 95% range
  chance gives and a two-sided p-value;
- :func:`cosine_over_cells`: the experts' cosine over all layers, and the mean cosine of the
  (layer, module) cells with a bootstrap interval over cells (cells are the replicates: one
  global cosine is dominated by the largest tensors and has no spread of its own);
- :func:`split_gain`: how much more of the language expert's share than of the math expert's a
  swap's language layers hold (the boundary rule's gain), per module kind, with a bootstrap
  interval over module kinds;
- :func:`share_agreement`: Spearman's rho between two analyses of the same expert (e.g. its delta
  against the base's Fisher importance on its data) on where in depth the mass lies, per module
  kind and per layer, and :func:`contrast_agreement` between their per-layer contrasts, with
  bootstrap intervals (:func:`layerswap.stats.spearman_ci`).

All read the CSV tables an analysis folder holds, so they apply to any earlier run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerswap.analysis.boundaries import module_diffs
from layerswap.errors import DataError
from layerswap.io.swap_geometry import SwapGeometry
from layerswap.stats import bootstrap_ci, spearman_ci


def read_table(folder: str | Path, name: str) -> pd.DataFrame:
    """``folder/name.csv`` of an analysis folder, or a one-line error naming what is missing."""
    path = Path(folder) / f"{name}.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: {folder} is not a finished analysis folder (run layerswap analyze there first)")
    return pd.read_csv(path)


def cells_from_deltas(deltas: pd.DataFrame) -> pd.DataFrame:
    """``(expert, layer, module, sumsq)`` of the transformer layers from a ``deltas.csv`` table
    (the squared L2 of each tensor, summed per layer and module kind)."""
    layered = deltas[deltas["layer"].notna()].assign(
        sumsq=lambda d: d["l2"].astype(float) ** 2, layer=lambda d: d["layer"].astype(int)
    )
    return layered.groupby(["expert", "layer", "module"], as_index=False)["sumsq"].sum()


def overlap_vs_chance(overlap: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """The total top-k% overlap of each pair and k against independent random sets of the same sizes.

    Columns: ``expert_a, expert_b, k_percent, n_both, expected`` (chance's mean count),
    ``jaccard_ratio`` (observed over chance's Jaccard), ``chance_low, chance_high`` (the ratio's
    central ``confidence`` range under chance) and ``p_value`` (two-sided, hypergeometric).
    """
    from scipy.stats import hypergeom

    rows = []
    for r in overlap[overlap["layer"].isna() & (overlap["module"] == "all")].itertuples():
        total, n_a, n_b, both = int(r.numel), int(r.n_a), int(r.n_b), int(r.n_both)
        null = hypergeom(total, n_b, n_a)
        expected_j = float(r.expected_jaccard)
        lo, hi = null.interval(confidence)

        def ratio(x: float, n_a: int = n_a, n_b: int = n_b, expected_j: float = expected_j) -> float:
            return x / (n_a + n_b - x) / expected_j if expected_j > 0 else float("nan")

        p = min(1.0, 2 * min(float(null.sf(both - 1)), float(null.cdf(both))))
        rows.append(
            {
                "expert_a": r.expert_a,
                "expert_b": r.expert_b,
                "k_percent": float(r.k_percent),
                "n_both": both,
                "expected": float(null.mean()),
                "jaccard_ratio": ratio(both),
                "chance_low": ratio(lo),
                "chance_high": ratio(hi),
                "p_value": p,
            }
        )
    return pd.DataFrame(rows)


def cosine_over_cells(cosine: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Per pair: the cosine over all layers, and the mean (layer, module) cell cosine with a bootstrap interval over cells."""
    rows = []
    for (a, b), sub in cosine.groupby(["expert_a", "expert_b"], sort=False):
        total = sub[sub["layer"].isna()]["cosine"]
        cells = sub[sub["layer"].notna() & (sub["module"] != "all")]["cosine"].dropna().to_numpy(float)
        low, high = bootstrap_ci(cells, confidence=confidence)
        rows.append(
            {
                "expert_a": a,
                "expert_b": b,
                "cosine": float(total.iloc[0]) if len(total) else float("nan"),
                "cell_mean": float(cells.mean()) if cells.size else float("nan"),
                "cell_low": low,
                "cell_high": high,
                "cells": int(cells.size),
            }
        )
    return pd.DataFrame(rows)


def split_gain(
    cells: pd.DataFrame, lang: str, math_: str, bottom: int, top: int, *, num_layers: int, confidence: float = 0.95
) -> dict[str, Any]:
    """The boundary rule's gain of giving ``lang`` the bottom and top layers: overall, per module kind
    (mean with a bootstrap interval over module kinds) and how many module kinds agree on its sign."""
    from layerswap.analysis.boundaries import contrast_table

    outer = SwapGeometry(bottom, top).outer_layers(num_layers)
    if not outer:
        raise DataError(f"bottom={bottom}, top={top} give the language expert no layer: a gain needs at least one")
    overall = float(contrast_table(cells, lang, math_, num_layers)["diff"].to_numpy()[outer].sum())
    per_module = np.array([d[outer].sum() for d in module_diffs(cells, lang, math_, num_layers)])
    low, high = bootstrap_ci(per_module, confidence=confidence)
    return {
        "bottom": bottom,
        "top": top,
        "gain": overall,
        "module_mean": float(per_module.mean()) if per_module.size else float("nan"),
        "module_low": low,
        "module_high": high,
        "modules_positive": int((per_module > 0).sum()),
        "modules": int(per_module.size),
    }


def _shares(cells: pd.DataFrame, expert: str) -> pd.Series:
    sub = cells[cells["expert"] == expert].set_index(["layer", "module"])["sumsq"]
    total = sub.sum()
    if not total > 0:
        raise DataError(f"{expert} has no mass in the transformer layers: there are no shares to compare")
    return sub / total


def _layer_profiles(shares: pd.Series) -> pd.Series:
    """Each module kind's shares over the layers, summing to 1 per kind: where in depth a kind's mass lies,
    with the kinds' sizes (a 4x larger MLP matrix holds more of every total) divided out."""
    per_module = shares.groupby(level="module").transform("sum")
    return (shares / per_module.where(per_module > 0)).dropna()


def share_agreement(
    a_cells: pd.DataFrame, b_cells: pd.DataFrame, expert: str, *, b_expert: str | None = None, confidence: float = 0.95
) -> dict[str, Any]:
    """Spearman's rho between two analyses of ``expert`` (in ``b``: ``b_expert``) on where in depth its
    mass lies: over the (layer, module) cells, each module kind's profile over the layers (so module
    sizes, which every analysis shares, do not make the agreement), and over the layers' shares;
    each with a bootstrap interval over cells or layers."""
    sa, sb = _shares(a_cells, expert), _shares(b_cells, b_expert or expert)
    pa, pb = _layer_profiles(sa), _layer_profiles(sb)
    common = pa.index.intersection(pb.index)
    if len(common) < 3:
        raise DataError(
            f"the two analyses share {len(common)} (layer, module) cells of {expert}: a rank correlation needs at least 3"
        )
    rho, low, high = spearman_ci(pa.loc[common].to_numpy(), pb.loc[common].to_numpy(), confidence=confidence)
    la, lb = sa.groupby(level="layer").sum(), sb.groupby(level="layer").sum()
    layers = la.index.intersection(lb.index)
    lrho, llow, lhigh = spearman_ci(la.loc[layers].to_numpy(), lb.loc[layers].to_numpy(), confidence=confidence)
    return {
        "expert": expert,
        "cells": len(common),
        "cell_rho": rho,
        "cell_low": low,
        "cell_high": high,
        "layers": len(layers),
        "layer_rho": lrho,
        "layer_low": llow,
        "layer_high": lhigh,
    }


def contrast_agreement(a: pd.DataFrame, b: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, Any]:
    """Spearman's rho between two ``contrast.csv`` tables' per-layer ``diff`` (language share minus
    math share): do both analyses put the language-leaning layers in the same places?"""
    joined = a.set_index("layer")["diff"].to_frame("a").join(b.set_index("layer")["diff"].to_frame("b"), how="inner").dropna()
    rho, low, high = spearman_ci(joined["a"].to_numpy(), joined["b"].to_numpy(), confidence=confidence)
    return {"layers": len(joined), "rho": rho, "low": low, "high": high}
