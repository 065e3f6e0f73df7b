"""The analysis's tables from pass 1's per-tensor numbers: per tensor, per (layer, module) cell, per
layer and the pairwise cosines (``deltas.csv``, ``layers.csv``, ``cosine.csv``), in one stable order."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerswap.analysis.deltas import Pass1
from layerswap.io import module_sort_key

DELTA_COLUMNS = [
    "expert",
    "tensor",
    "layer",
    "module",
    "numel",
    "l2",
    "rel_l2",
    "rms",
    "mean_abs",
    "max_abs",
    "base_l2",
    "nonfinite",
]


def _ratio(num: float, den: float) -> float:
    """num/den, NaN instead of a division by zero (an all-zero base tensor or expert)."""
    return num / den if den > 0 else float("nan")


def deltas_table(p1: Pass1) -> pd.DataFrame:
    """One row per expert and tensor (``rel_l2 = ||value|| / ||W_base||``)."""
    rows = []
    for e in p1.experts:
        for t in p1.tensors:
            s = p1.stats[(e, t)]
            n = p1.numel[t]
            l2 = math.sqrt(max(s.sumsq, 0.0))
            base_l2 = math.sqrt(p1.base_sumsq[t]) if not math.isnan(p1.base_sumsq[t]) else float("nan")
            rows.append(
                {
                    "expert": e,
                    "tensor": t,
                    "layer": p1.layer[t],
                    "module": p1.module[t],
                    "numel": n,
                    "l2": l2,
                    "rel_l2": 0.0 if l2 == 0 else _ratio(l2, base_l2),
                    "rms": _ratio(l2, math.sqrt(n)),
                    "mean_abs": _ratio(s.sum_abs, n),
                    "max_abs": s.max_abs,
                    "base_l2": base_l2,
                    "nonfinite": s.nonfinite,
                }
            )
    out = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    out["layer"] = out["layer"].astype("Int64")
    return out


def cell_sumsq(p1: Pass1) -> pd.DataFrame:
    """Squared magnitude per expert x layer x module (transformer layers only): ``expert, layer, module, sumsq, base_sumsq, numel``."""
    rows = [
        {
            "expert": e,
            "layer": p1.layer[t],
            "module": p1.module[t],
            "sumsq": p1.stats[(e, t)].sumsq,
            "base_sumsq": p1.base_sumsq[t],
            "numel": p1.numel[t],
        }
        for e in p1.experts
        for t in p1.layer_tensors
    ]
    df = pd.DataFrame(rows, columns=["expert", "layer", "module", "sumsq", "base_sumsq", "numel"])
    return df.groupby(["expert", "layer", "module"], sort=False).sum().reset_index()


def layers_table(p1: Pass1) -> pd.DataFrame:
    """Per expert and layer: ``l2, rel_l2, share`` (share of the expert's squared update over all layers)."""
    cells = cell_sumsq(p1)
    by_layer = cells.groupby(["expert", "layer"], sort=False)[["sumsq", "base_sumsq", "numel"]].sum().reset_index()
    totals = by_layer.groupby("expert")["sumsq"].transform("sum")
    by_layer["l2"] = np.sqrt(by_layer["sumsq"].clip(lower=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        by_layer["rel_l2"] = np.where(by_layer["base_sumsq"] > 0, by_layer["l2"] / np.sqrt(by_layer["base_sumsq"]), np.nan)
        by_layer["share"] = np.where(totals > 0, by_layer["sumsq"] / totals.where(totals > 0, 1), np.nan)
    by_layer["layer"] = by_layer["layer"].astype(int)
    return (
        by_layer[["expert", "layer", "numel", "l2", "rel_l2", "share"]]
        .sort_values(["expert", "layer"], kind="stable")
        .reset_index(drop=True)
    )


def cosine_table(p1: Pass1) -> pd.DataFrame:
    """Cosine between two experts' values per layer x module, per layer (module 'all') and in total."""
    rows = []
    experts = p1.experts
    for i, a in enumerate(experts):
        for b in experts[i + 1 :]:
            for t in p1.layer_tensors:
                rows.append(
                    {
                        "expert_a": a,
                        "expert_b": b,
                        "layer": p1.layer[t],
                        "module": p1.module[t],
                        "dot": p1.dots[(a, b, t)],
                        "sq_a": p1.stats[(a, t)].sumsq,
                        "sq_b": p1.stats[(b, t)].sumsq,
                    }
                )
    cols = ["expert_a", "expert_b", "layer", "module", "cosine"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    sums = ["dot", "sq_a", "sq_b"]
    keys = ["expert_a", "expert_b"]
    cell = df.groupby(keys + ["layer", "module"], sort=False)[sums].sum().reset_index()
    layer = df.groupby(keys + ["layer"], sort=False)[sums].sum().reset_index().assign(module="all")
    total = df.groupby(keys, sort=False)[sums].sum().reset_index().assign(layer=pd.NA, module="all")
    out = pd.concat([cell, layer, total], ignore_index=True)
    den = np.sqrt(out["sq_a"].clip(lower=0) * out["sq_b"].clip(lower=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["cosine"] = np.where(den > 0, out["dot"] / den.where(den > 0, 1), np.nan)
    out["layer"] = out["layer"].astype("Int64")
    out = out.sort_values(["expert_a", "expert_b", "layer", "module"], key=_order_key, na_position="last", kind="stable")
    return out[cols].reset_index(drop=True)


def _order_key(col: pd.Series) -> pd.Series:
    """Sort modules in display order ('all' last); other columns as they are."""
    if col.name == "module":
        return col.map(lambda m: (1, m) if m == "all" else (0, *module_sort_key(m)))
    return col
