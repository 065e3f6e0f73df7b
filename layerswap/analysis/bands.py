"""Exact top-k% sets in the one read of pass 1, whatever the deltas look like: counts in a band.

The top-k% set of an expert is every transformer-layer |value| >= ``t``, the K-th largest (see
``overlap.py``). Before the pass, a few thousand sampled values per layer tensor estimate, per expert
and k, a *band* of top-16-bit histogram bins ``[lo, hi)`` that holds ``t`` (generous margins: the
guess only decides what is counted finely, and is checked at the end). During the pass, per tensor:

- values at or above the band (``>= edge(hi)``) are in the set for sure: only counted;
- values inside the band are counted per exact float32 bit pattern (a histogram of their codes,
  stored sparsely: bf16 checkpoints give few distinct deltas, so it stays small however many
  values share them: a dense ±lr delta costs no more than a planted one);
- values below the band are out for sure;
- per pair, positions where both experts reach their band are counted when both are sure members,
  otherwise histogrammed by (a's code or "above", b's code or "above", same sign).

At the end ``t`` is read off the band's merged histogram (exact, ties included), and every per-tensor
count (members, shared members, sign agreement) follows from the stored histograms: the same integers
as sorting every value. Memory is the sparse histograms (bounded by ``cap`` entries), never the values.
When the guess missed (``t`` outside its band) or the histograms would pass ``cap``, ``finish`` returns
None and the multi-pass method of ``overlap.py`` runs instead: slower, same result.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from layerswap.analysis.deltas import NBINS, SMALLEST_COUNTED, Pass1, ValueSource, Workspace
from layerswap.analysis.overlap import SAMPLE_SPANS, SAMPLE_WIDTH, Cut, Pass2, bits_to_float, k_count_of
from layerswap.io import ModelFolder

#: Bin of +inf: every finite non-negative float32 lies below it.
TOP_BIN = 0x7F80
#: Entries (sparse histogram cells) the band method may store before the multi-pass method is used instead.
DEFAULT_BAND_CAP = 1 << 26
#: The band spans the bins where the sampled count from the top lies within K x (1 -/+ MARGIN), plus PAD bins each side.
MARGIN, PAD = 0.5, 2
#: Widest band histogrammed with ``bincount`` (a dense array of this many cells); wider bands are sorted.
DENSE_CELLS = 1 << 22

Band = tuple[int, int]  # [lo, hi) in top-16-bit bins; lo >= 1 (bin 0 never counts)


def _spans(numel: int) -> list[tuple[int, int]]:
    """Evenly spread flat index ranges to sample a tensor at (all of it when small)."""
    if numel <= 4 * SAMPLE_SPANS * SAMPLE_WIDTH:
        return [(0, numel)] if numel else []
    step = numel // SAMPLE_SPANS
    return [(i * step, i * step + SAMPLE_WIDTH) for i in range(SAMPLE_SPANS)]


def guess_bands(
    base: ModelFolder, sources: Sequence[ValueSource], tensors: Sequence[str], top_k: Sequence[float], population: int
) -> dict[tuple[str, float], Band]:
    """Per (expert, k), the bins likely to hold the threshold, from weighted samples of every layer tensor.

    Experts that cannot be sampled (LoRA adapters) get the whole range: every non-zero value is
    histogrammed, which ``cap`` bounds.
    """
    hist = {s.name: np.zeros(NBINS, dtype=np.float64) for s in sources}
    usable = {s.name: True for s in sources}
    for name in tensors:
        numel = base.info(name).numel
        spans = _spans(numel)
        taken = sum(b - a for a, b in spans)
        for src in sources:
            if not usable[src.name] or not src.changes(name) or not taken:
                continue
            v = src.sample(name, spans)
            if v is None:
                usable[src.name] = False
                continue
            a = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).abs_()
            hist[src.name] += np.bincount((a.view(torch.int32) >> 16).numpy(), minlength=NBINS) * (numel / taken)
    out: dict[tuple[str, float], Band] = {}
    for e, h in hist.items():
        from_top = np.cumsum(h[:0:-1])  # bins NBINS-1 .. 1

        def bin_reaching(count: float) -> int:
            return NBINS - 1 - int(np.searchsorted(from_top, count))  # 0 when never reached

        for k in top_k:
            kc = k_count_of(k, population)
            if not usable[e]:
                out[(e, k)] = (1, TOP_BIN)
                continue
            lo = max(1, bin_reaching(kc * (1 + MARGIN)) - PAD)
            hi = min(TOP_BIN, max(lo + 1, bin_reaching(kc * (1 - MARGIN)) + PAD + 1))
            out[(e, k)] = (lo, hi)
    return out


def _histogram(codes: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct codes in [lo, hi) (as offsets from lo, int64) and their counts."""
    if hi - lo <= DENSE_CELLS:
        h = np.bincount(codes - lo, minlength=hi - lo)
        nz = np.flatnonzero(h)
        return nz, h[nz]
    u, c = np.unique(codes.astype(np.int64) - lo, return_counts=True)
    return u, c


def _merge(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum sparse histograms (codes, counts) into one, codes ascending."""
    parts = [p for p in parts if p[0].size]
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    codes = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[starts], np.add.reduceat(counts, starts)


class BandStream:
    """Pass 1's observer for the one-read exact top-k (module docstring); ``finish`` gives the counts or None."""

    thread_safe = True  # per-tensor results go to their own keys; run_pass1 need not serialise calls

    def __init__(
        self,
        experts: Sequence[str],
        top_k: Sequence[float],
        population: int,
        bands: Mapping[tuple[str, float], Band],
        *,
        signed: bool,
        cap: int = DEFAULT_BAND_CAP,
    ) -> None:
        self.experts = list(experts)
        self.top_k = list(top_k)
        self.population = population
        self.signed = signed
        self.cap = cap
        self.pairs = [(a, b) for i, a in enumerate(self.experts) for b in self.experts[i + 1 :]]
        self.code = {key: (lo << 16, hi << 16) for key, (lo, hi) in bands.items()}  # [lo, hi) as float32 bit patterns
        self.low = {e: min(self.code[(e, k)][0] for k in self.top_k) for e in self.experts}
        # (e, k, tensor) -> (count above the band, in-band codes - lo, their counts)
        self.single: dict[tuple[str, float, str], tuple[int, np.ndarray, np.ndarray]] = {}
        # (a, b, k, tensor) -> (sure shared members, of them same sign, open keys, their counts)
        self.pair: dict[tuple[str, str, float, str], tuple[int, int, np.ndarray, np.ndarray]] = {}
        self.entries = 0
        self.overflow = False
        self._lock = threading.Lock()

    def observe(self, name: str, values: Mapping[str, torch.Tensor], absvals: Mapping[str, torch.Tensor], ws: Workspace) -> None:
        if self.overflow:
            return
        stored = 0
        where: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # expert -> (positions reaching its lowest band, their codes)
        for i, e in enumerate(self.experts):
            if e not in absvals:  # unchanged here: every count is 0
                continue
            a = absvals[e].numpy()
            mask = np.greater_equal(a.view(np.int32), self.low[e], out=ws.buf(f"band{i}", a.size, torch.bool).numpy())
            idx = np.flatnonzero(mask)
            codes = a.view(np.int32)[idx]
            where[e] = (idx, codes)
            for k in self.top_k:
                lo, hi = self.code[(e, k)]
                above = int(np.count_nonzero(codes >= hi))
                inside = codes[(codes >= lo) & (codes < hi)]
                u, c = _histogram(inside, lo, hi) if inside.size else (np.empty(0, np.int64), np.empty(0, np.int64))
                self.single[(e, k, name)] = (above, u, c)
                stored += u.size
        for a, b in self.pairs:
            if a not in where or b not in where:
                continue
            idx, ca = where[a]
            vb = values[b].numpy()[idx]
            cb = np.abs(vb).view(np.int32)
            same = (np.signbit(values[a].numpy()[idx]) == np.signbit(vb)) if self.signed else None
            for k in self.top_k:
                (lo_a, hi_a), (lo_b, hi_b) = self.code[(a, k)], self.code[(b, k)]
                sure = (ca >= hi_a) & (cb >= hi_b)
                n_sure = int(np.count_nonzero(sure))
                n_agree = int(np.count_nonzero(sure & same)) if same is not None else 0
                open_ = (ca >= lo_a) & (cb >= lo_b) & ~sure
                if open_.any():
                    # key: a's offset in its band (band width = above), then b's offset x 2 + same sign
                    ka = np.minimum(ca[open_], hi_a).astype(np.int64) - lo_a
                    kb = np.minimum(cb[open_], hi_b).astype(np.int64) - lo_b
                    key = (ka << 32) | (kb << 1) | (same[open_] if same is not None else 0)
                    u, c = np.unique(key, return_counts=True)
                else:
                    u = c = np.empty(0, np.int64)
                self.pair[(a, b, k, name)] = (n_sure, n_agree, u, c)
                stored += u.size
        with self._lock:
            self.entries += stored
            if self.entries > self.cap:
                self.overflow = True
                self.single.clear()
                self.pair.clear()

    def finish(self, p1: Pass1) -> Pass2 | None:
        """Exact thresholds and per-tensor counts, or None when a threshold fell outside its band (or ``cap`` was passed)."""
        if self.overflow:
            return None
        tensors = p1.layer_tensors
        cuts: dict[tuple[str, float], Cut] = {}
        member: dict[tuple[str, float], int] = {}  # code >= this (as an offset in the band) is in the set
        for e in self.experts:
            nonzero = sum(p1.stats[(e, t)].nnz for t in tensors)
            for k in self.top_k:
                cut = Cut(e, k, k_count_of(k, self.population), self.population, nonzero, mode="exact")
                lo, hi = self.code[(e, k)]
                parts = [self.single[key] for t in tensors if (key := (e, k, t)) in self.single]
                above = sum(p[0] for p in parts)
                codes, counts = _merge([(p[1], p[2]) for p in parts])
                if nonzero == 0:
                    cut.mode, cut.sure_at, cut.threshold = "empty", math.inf, math.inf
                    member[(e, k)] = hi - lo + 1  # nothing, not even "above"
                elif nonzero < cut.k_count:
                    if lo != 1 << 16:  # not every non-zero value was seen
                        return None
                    cut.mode, cut.sure_at, cut.threshold = "all_nonzero", SMALLEST_COUNTED, 0.0
                    member[(e, k)] = 0
                else:
                    if above >= cut.k_count:  # the threshold lies above the band
                        return None
                    from_top = above + np.cumsum(counts[::-1])
                    i = int(np.searchsorted(from_top, cut.k_count))
                    if i == from_top.size:  # below the band
                        return None
                    offset = int(codes[::-1][i])
                    cut.threshold = cut.sure_at = bits_to_float(lo + offset)
                    cut.bin = (lo + offset) >> 16
                    member[(e, k)] = offset
                cuts[(e, k)] = cut
        result = Pass2(cuts)
        for k in self.top_k:
            for t in tensors:
                for e in self.experts:
                    entry = self.single.get((e, k, t))
                    m = member[(e, k)]
                    result.n[(e, k, t)] = 0 if entry is None or cuts[(e, k)].mode == "empty" else (
                        entry[0] + int(entry[2][entry[1] >= m].sum())
                    )
                for a, b in self.pairs:
                    entry = self.pair.get((a, b, k, t))
                    if entry is None or "empty" in (cuts[(a, k)].mode, cuts[(b, k)].mode):
                        result.both[(a, b, k, t)] = result.agree[(a, b, k, t)] = 0
                        continue
                    n_sure, n_agree, u, c = entry
                    inside = ((u >> 32) >= member[(a, k)]) & (((u & 0xFFFFFFFF) >> 1) >= member[(b, k)])
                    result.both[(a, b, k, t)] = n_sure + int(c[inside].sum())
                    result.agree[(a, b, k, t)] = n_agree + (int(c[inside & (u & 1 == 1)].sum()) if self.signed else 0)
        result.kept_boundary = self.entries
        return result
