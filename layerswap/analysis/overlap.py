"""Exact global top-k% sets of |value| and their overlap between experts, without holding all values.

The top-k% set of an expert is every transformer-layer parameter whose |value| is at least ``t``,
the K-th largest |value| over all P transformer-layer parameters, with ``K = ceil(k/100 * P)``
(ties at ``t`` are all included; zeros never are, so an expert that changed fewer than K
parameters has all of them as its set).

``t`` is found exactly in the one read of pass 1 by ``bands.BandStream`` (counts in a band of
histogram bins guessed from samples). Where that cannot decide (the guess missed, or its histograms
would pass their cap), the exact multi-pass method here runs instead: a histogram pass over the layer
tensors names the bin holding the K-th value; pass 2 reads them again, counts the sure members of
each expert and pair per tensor, and keeps the few values inside a threshold bin, resolved at the
end; when those bins are too crowded to keep (deltas that are nearly all ±lr, after a few Adam
steps), a refining pass histograms the low 16 bits inside the bin, giving ``t`` bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from layerswap.analysis.delta_tables import _order_key
from layerswap.analysis.deltas import (
    NBINS,
    SMALLEST_COUNTED,
    Pass1,
    ValueSource,
    clean_nonfinite,
    reading_order,
)
from layerswap.analysis.workspace import Workspace
from layerswap.errors import ConfigError
from layerswap.io import ModelFolder
from layerswap.progress import progress

#: Boundary values kept in memory before the refining pass is used instead (about 4 bytes each per expert).
DEFAULT_BOUNDARY_CAP = 1 << 24
#: Sampled spans per layer tensor for the first guess of where the thresholds lie (``bands.py``), and their length.
SAMPLE_SPANS, SAMPLE_WIDTH = 64, 256
_SMALLEST_COUNTED = SMALLEST_COUNTED


def bits_to_float(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def check_top_k(values: Sequence[float]) -> list[float]:
    """Validate k percentages: each in (0, 100]; at least one; duplicates removed, order kept."""
    out: list[float] = []
    for value in values:
        try:
            k = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"top-k {value!r} is not a number: pass percentages like --top-k 1,5") from None
        if not (0 < k <= 100) or math.isnan(k):
            raise ConfigError(f"top-k {value!r} is outside (0, 100]: pass percentages like --top-k 1,5")
        if k not in out:
            out.append(k)
    if not out:
        raise ConfigError("no top-k percentage given: pass e.g. --top-k 1,5")
    return out


@dataclass
class Cut:
    """Where one expert's top-k% set begins, as known after pass 1 and then exactly."""

    expert: str
    k_percent: float
    k_count: int
    population: int
    nonzero: int
    mode: str  # "exact": a threshold; "all_nonzero": fewer than K changed parameters; "empty": none changed
    sure_at: float = math.inf  # |v| >= sure_at is in the set
    bnd_lo: float | None = None  # values in [bnd_lo, sure_at) need resolving
    bin: int = 0
    rank_in_bin: int = 0
    threshold: float | None = None  # the exact K-th largest |value|

    @property
    def lower(self) -> float:
        """Below this nothing can be in the set (used to skip tensors)."""
        return self.bnd_lo if self.bnd_lo is not None else self.sure_at

    def contains(self, a: torch.Tensor) -> torch.Tensor:
        """Membership once the threshold is exact (a boundary cut compares against the resolved threshold)."""
        return a >= (self.threshold if self.bnd_lo is not None else self.sure_at)


def k_count_of(k: float, population: int) -> int:
    """K = ceil(k/100 * P), at least 1."""
    return max(1, math.ceil(k / 100.0 * population - 1e-9))


def find_cut(expert: str, k: float, hist: np.ndarray, population: int, nonzero: int) -> Cut:
    """Locate the bin of the K-th largest |value| from the pass-1 histogram."""
    k_count = k_count_of(k, population)
    cut = Cut(expert, k, k_count, population, nonzero, mode="exact")
    if nonzero == 0:
        cut.mode, cut.sure_at, cut.threshold = "empty", math.inf, math.inf
        return cut
    if nonzero < k_count:
        cut.mode, cut.sure_at, cut.threshold = "all_nonzero", _SMALLEST_COUNTED, 0.0
        return cut
    from_top = np.cumsum(hist[::-1])
    i = int(np.searchsorted(from_top, k_count))  # first index with cumulative count >= K
    b = NBINS - 1 - i
    above = int(from_top[i] - hist[b])
    cut.bin, cut.rank_in_bin = b, k_count - above
    cut.bnd_lo, cut.sure_at = bits_to_float(b << 16), bits_to_float((b + 1) << 16)
    return cut


@dataclass
class Pass2:
    """Counts per (k, tensor) after resolution."""

    cuts: dict[tuple[str, float], Cut]
    n: dict[tuple[str, float, str], int] = field(default_factory=dict)  # (expert, k, tensor)
    both: dict[tuple[str, str, float, str], int] = field(default_factory=dict)  # (a, b, k, tensor)
    agree: dict[tuple[str, str, float, str], int] = field(default_factory=dict)
    refined: bool = False
    kept_boundary: int = 0


def _refine(base: ModelFolder, sources: Sequence[ValueSource], p1: Pass1, cuts: list[Cut], tensors: list[str]) -> None:
    """Histogram the low 16 bits inside each cut's bin: gives each threshold bit-exactly."""
    lo_hist = {(c.expert, c.k_percent): np.zeros(NBINS, dtype=np.int64) for c in cuts}
    by_expert = {s.name: s for s in sources}
    ws = Workspace.for_tensors([base] + [f for s in sources for f in s.folders()], tensors)
    for name in progress(tensors, desc="top-k refine", unit="tensor"):
        wanted = [c for c in cuts if p1.stats[(c.expert, name)].max_abs >= c.lower]
        if not wanted:
            continue
        values = _read_values(base, [by_expert[e] for e in {c.expert for c in wanted}], name, ws, p1)
        for c in wanted:
            a = values[c.expert].abs()
            inside = a[(a >= c.bnd_lo) & (a < c.sure_at)]
            lo_hist[(c.expert, c.k_percent)] += torch.bincount(inside.view(torch.int32) & 0xFFFF, minlength=NBINS).numpy()
    for c in cuts:
        hist = lo_hist[(c.expert, c.k_percent)]
        from_top = np.cumsum(hist[::-1])
        i = int(np.searchsorted(from_top, c.rank_in_bin))
        low = NBINS - 1 - i
        c.threshold = bits_to_float((c.bin << 16) | low)
        c.sure_at, c.bnd_lo = c.threshold, None


def _read_values(
    base: ModelFolder, sources: Sequence[ValueSource], name: str, ws: Workspace, p1: Pass1
) -> dict[str, torch.Tensor]:
    """Flat float32 values of the given sources on one tensor (zeros where a source does not change it).

    NaN/Inf (found and counted in pass 1) are zeroed again, as pass 1 did.
    """
    numel = base.info(name).numel
    base_flat = ws.read(base.info(name), "base") if any(s.needs_base(name) and s.changes(name) for s in sources) else None
    out: dict[str, torch.Tensor] = {}
    for i, src in enumerate(sources):
        v = src.values(name, base_flat if src.needs_base(name) else None, ws, f"value{i}") if src.changes(name) else None
        if v is None:
            v = ws.buf(f"value{i}", numel).zero_()
        elif p1.stats[(src.name, name)].nonfinite:
            v = clean_nonfinite(v)[0]
        out[src.name] = v
    return out


def run_pass2(
    base: ModelFolder,
    sources: Sequence[ValueSource],
    p1: Pass1,
    top_k: Sequence[float],
    *,
    boundary_cap: int = DEFAULT_BOUNDARY_CAP,
) -> Pass2:
    """Exact thresholds and per-tensor top-k counts for every expert and pair (module docstring)."""
    experts = [s.name for s in sources]
    tensors = reading_order(base, p1.layer_tensors)
    cuts: dict[tuple[str, float], Cut] = {}
    for e in experts:
        nonzero = sum(p1.stats[(e, t)].nnz for t in tensors)
        for k in top_k:
            cuts[(e, k)] = find_cut(e, k, p1.hist[e], p1.population, nonzero)
    result = Pass2(cuts)
    pending = [c for c in cuts.values() if c.bnd_lo is not None]
    predicted = sum(int(p1.hist[c.expert][c.bin]) for c in pending)
    if pending and (predicted > boundary_cap or any(c.bin == 0 for c in pending)):
        _refine(base, sources, p1, pending, tensors)
        result.refined = True
        pending = []
    pairs = [(a, b) for i, a in enumerate(experts) for b in experts[i + 1 :]]
    # Values whose membership waits for an exact threshold: per (expert, k) the |values| inside the
    # threshold bin, and per (a, b, k) both |values| (and sign agreement) where the pair's membership is open.
    kept_single: dict[tuple[str, float], list[tuple[str, torch.Tensor]]] = {key: [] for key in cuts}
    kept_pair: dict[tuple[str, str, float], list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]]] = {}
    by_expert = {s.name: s for s in sources}
    lowest = {e: min(cuts[(e, k)].lower for k in top_k) for e in experts}
    ws = Workspace.for_tensors([base] + [f for s in sources for f in s.folders()], tensors)
    for name in progress(tensors, desc="top-k overlap", unit="tensor"):
        for k in top_k:
            for e in experts:
                result.n[(e, k, name)] = 0
            for a, b in pairs:
                result.both[(a, b, k, name)] = result.agree[(a, b, k, name)] = 0
        # An expert whose largest |value| here is below all its cuts has no member here: skip reading it.
        active = [e for e in experts if p1.stats[(e, name)].max_abs >= lowest[e]]
        if not active:
            continue
        numel = base.info(name).numel
        values = _read_values(base, [by_expert[e] for e in active], name, ws, p1)
        # Candidates: the positions where an expert's |value| reaches its lowest cut (about k% of them).
        mask: dict[str, torch.Tensor] = {}
        for i, e in enumerate(active):
            absval = torch.abs(values[e], out=ws.buf("abs", numel))
            mask[e] = torch.ge(absval, lowest[e], out=ws.buf(f"mask{i}", numel, torch.bool))
            cand = absval[mask[e]]
            for k in top_k:
                cut = cuts[(e, k)]
                result.n[(e, k, name)] = int(torch.count_nonzero(cand >= cut.sure_at))
                if cut.bnd_lo is not None:
                    inside = cand[(cand >= cut.bnd_lo) & (cand < cut.sure_at)]
                    if inside.numel():
                        kept_single[(e, k)].append((name, inside))
        for a, b in pairs:
            if a not in mask or b not in mask:
                continue
            va, vb = values[a][mask[a]], values[b][mask[a]]  # both experts at a's candidates
            abs_a, abs_b = va.abs(), vb.abs()
            same = (torch.signbit(va) == torch.signbit(vb)) if p1.signed else None
            for k in top_k:
                ca, cb = cuts[(a, k)], cuts[(b, k)]
                both = (abs_a >= ca.sure_at) & (abs_b >= cb.sure_at)
                result.both[(a, b, k, name)] = int(torch.count_nonzero(both))
                if same is not None:
                    result.agree[(a, b, k, name)] = int(torch.count_nonzero(both & same))
                if ca.bnd_lo is not None or cb.bnd_lo is not None:
                    open_ = (abs_a >= ca.lower) & (abs_b >= cb.lower) & ~both
                    if bool(open_.any()):
                        kept_pair.setdefault((a, b, k), []).append(
                            (name, abs_a[open_], abs_b[open_], same[open_] if same is not None else None)
                        )
        del values, mask
    result.kept_boundary = sum(v.numel() for chunks in kept_single.values() for _, v in chunks)
    _resolve(result, pending, kept_single, kept_pair)
    return result


def _resolve(result: Pass2, pending: list[Cut], kept_single: dict, kept_pair: dict) -> None:
    """Exact thresholds from the kept in-bin values, then the kept values counted against them."""
    for cut in pending:
        chunks = kept_single[(cut.expert, cut.k_percent)]
        values = torch.cat([v for _, v in chunks]) if chunks else torch.empty(0)
        if values.numel() < cut.rank_in_bin:  # cannot happen: the histogram counted them
            raise RuntimeError(f"top-k bin of {cut.expert} holds {values.numel()} values, expected >= {cut.rank_in_bin}")
        cut.threshold = float(torch.kthvalue(values, values.numel() - cut.rank_in_bin + 1).values)
    for (e, k), chunks in kept_single.items():
        cut = result.cuts[(e, k)]
        for name, v in chunks:
            result.n[(e, k, name)] += int(torch.count_nonzero(cut.contains(v)))
    for (a, b, k), chunks in kept_pair.items():
        ca, cb = result.cuts[(a, k)], result.cuts[(b, k)]
        for name, abs_a, abs_b, same in chunks:
            both = ca.contains(abs_a) & cb.contains(abs_b)
            result.both[(a, b, k, name)] += int(torch.count_nonzero(both))
            if same is not None:
                result.agree[(a, b, k, name)] += int(torch.count_nonzero(both & same))


class HistogramObserver:
    """Pass 1's observer for the multi-pass method: the top-16-bit histogram of every expert's |values|."""

    def __init__(self, base: ModelFolder, experts: Sequence[str]) -> None:
        self.base = base
        self.hist = {e: np.zeros(NBINS, dtype=np.int64) for e in experts}

    def observe(self, name: str, values: Mapping[str, torch.Tensor], absvals: Mapping[str, torch.Tensor], ws: Workspace) -> None:
        for e, h in self.hist.items():
            if e in absvals:
                a = absvals[e]
                h += torch.bincount(torch.bitwise_right_shift(a.view(torch.int32), 16), minlength=NBINS).numpy()
            else:  # unchanged here: all zeros
                h[0] += self.base.info(name).numel


def histogram_pass(base: ModelFolder, sources: Sequence[ValueSource], p1: Pass1) -> None:
    """Fill ``p1.hist``: the top-16-bit histogram of every expert's |values| over the layer tensors (for the multi-pass method)."""
    tensors = reading_order(base, p1.layer_tensors)
    p1.hist = {s.name: np.zeros(NBINS, dtype=np.int64) for s in sources}
    ws = Workspace()
    for name in progress(tensors, desc="top-k histogram", unit="tensor"):
        values = _read_values(base, sources, name, ws, p1)
        for src in sources:
            a = torch.abs(values[src.name], out=ws.buf("abs", p1.numel[name]))
            p1.hist[src.name] += torch.bincount(torch.bitwise_right_shift(a.view(torch.int32), 16), minlength=NBINS).numpy()


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def expected_jaccard(n_a: np.ndarray | float, n_b: np.ndarray | float, total: np.ndarray | float) -> np.ndarray:
    """Jaccard index expected of independent random sets of sizes n_a, n_b among ``total``."""
    n_a, n_b, total = (np.asarray(x, dtype=float) for x in (n_a, n_b, total))
    with np.errstate(divide="ignore", invalid="ignore"):
        inter = np.where(total > 0, n_a * n_b / total, np.nan)
        union = n_a + n_b - inter
        return np.where(union > 0, inter / union, np.nan)


def _cells(p1: Pass1) -> pd.DataFrame:
    tensors = p1.layer_tensors
    return pd.DataFrame(
        {
            "tensor": tensors,
            "layer": [p1.layer[t] for t in tensors],
            "module": [p1.module[t] for t in tensors],
            "numel": [p1.numel[t] for t in tensors],
        }
    )


def _with_levels(df: pd.DataFrame, keys: list[str], sums: list[str]) -> pd.DataFrame:
    """Rows per (layer, module), per layer (module 'all') and in total (layer empty, module 'all')."""
    by_cell = df.groupby(keys + ["layer", "module"], sort=False)[sums].sum().reset_index()
    by_layer = df.groupby(keys + ["layer"], sort=False)[sums].sum().reset_index().assign(module="all")
    total = df.groupby(keys, sort=False)[sums].sum().reset_index().assign(layer=pd.NA, module="all")
    out = pd.concat([by_cell, by_layer, total], ignore_index=True)
    out["layer"] = out["layer"].astype("Int64")
    out = out.sort_values(keys + ["layer", "module"], key=_order_key, na_position="last", kind="stable")
    return out.reset_index(drop=True)


def topk_table(p1: Pass1, p2: Pass2, top_k: Sequence[float]) -> pd.DataFrame:
    """Where each expert's top-k% set lies: ``expert, k_percent, layer, module, n, numel, fraction``."""
    cells = _cells(p1)
    frames = []
    for e in p1.experts:
        for k in top_k:
            f = cells.copy()
            f["expert"], f["k_percent"] = e, k
            f["n"] = [p2.n[(e, k, t)] for t in f["tensor"]]
            frames.append(f)
    if not frames:
        return pd.DataFrame(columns=["expert", "k_percent", "layer", "module", "n", "numel", "fraction"])
    out = _with_levels(pd.concat(frames, ignore_index=True), ["expert", "k_percent"], ["n", "numel"])
    out["fraction"] = out["n"] / out["numel"]
    return out[["expert", "k_percent", "layer", "module", "n", "numel", "fraction"]]


OVERLAP_COLUMNS = [
    "expert_a", "expert_b", "k_percent", "layer", "module", "numel", "n_a", "n_b", "n_both",
    "jaccard", "expected_jaccard", "jaccard_ratio", "sign_agree",
]  # fmt: skip


def overlap_table(p1: Pass1, p2: Pass2, top_k: Sequence[float]) -> pd.DataFrame:
    """Pairwise overlap of the top-k% sets per layer x module, per layer and in total."""
    cells = _cells(p1)
    frames = []
    experts = p1.experts
    for i, a in enumerate(experts):
        for b in experts[i + 1 :]:
            for k in top_k:
                f = cells.copy()
                f["expert_a"], f["expert_b"], f["k_percent"] = a, b, k
                f["n_a"] = [p2.n[(a, k, t)] for t in f["tensor"]]
                f["n_b"] = [p2.n[(b, k, t)] for t in f["tensor"]]
                f["n_both"] = [p2.both[(a, b, k, t)] for t in f["tensor"]]
                f["n_agree"] = [p2.agree[(a, b, k, t)] for t in f["tensor"]]
                frames.append(f)
    if not frames:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    out = _with_levels(
        pd.concat(frames, ignore_index=True), ["expert_a", "expert_b", "k_percent"], ["numel", "n_a", "n_b", "n_both", "n_agree"]
    )
    union = out["n_a"] + out["n_b"] - out["n_both"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["jaccard"] = np.where(union > 0, out["n_both"] / union.where(union > 0, 1), np.nan)
        out["expected_jaccard"] = expected_jaccard(out["n_a"], out["n_b"], out["numel"])
        out["jaccard_ratio"] = out["jaccard"] / out["expected_jaccard"]
        out["sign_agree"] = (
            np.where(out["n_both"] > 0, out["n_agree"] / out["n_both"].where(out["n_both"] > 0, 1), np.nan)
            if p1.signed
            else np.nan
        )
    out["jaccard_ratio"] = out["jaccard_ratio"].replace([np.inf, -np.inf], np.nan)
    return out[OVERLAP_COLUMNS]


def thresholds_table(p2: Pass2) -> pd.DataFrame:
    rows = [
        {
            "expert": c.expert,
            "k_percent": c.k_percent,
            "threshold": c.threshold,
            "k_count": c.k_count,
            "population": c.population,
            "nonzero": c.nonzero,
            "mode": c.mode,
        }
        for c in p2.cuts.values()
    ]
    return pd.DataFrame(rows, columns=["expert", "k_percent", "threshold", "k_count", "population", "nonzero", "mode"])
