"""Exact top-k% sets in the one read of pass 1, whatever the deltas look like: counts in a band.

The top-k% set of an expert is every transformer-layer |value| >= ``t``, the K-th largest (see
``overlap.py``). Before the pass, a few thousand sampled values per layer tensor estimate, per expert
and k, a *band* of float32 bit patterns ``[lo, hi)`` that holds ``t``: about K x (1 -/+ m) values
from the top, m six standard errors of the sampled count (``guess_bands``). The guess only decides
what is counted finely and is checked at the end; a narrow band is what keeps the histograms small
when the deltas take many distinct values (Gaussian deltas whose scale varies by tensor). During the
pass, per tensor:

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

from layerswap.analysis.deltas import SMALLEST_COUNTED, Pass1, ValueSource
from layerswap.analysis.overlap import SAMPLE_SPANS, SAMPLE_WIDTH, Cut, Pass2, bits_to_float, k_count_of
from layerswap.analysis.workspace import Workspace
from layerswap.io import ModelFolder

#: Bit pattern of +inf: every finite non-negative float32 lies below it; and of the smallest value that counts.
TOP_CODE, SMALLEST_CODE = 0x7F800000, 1 << 16
#: Entries (sparse histogram cells) the band method may store before the multi-pass method is used instead.
DEFAULT_BAND_CAP = 1 << 26
#: The band spans the values where the sampled count from the top lies within K x (1 -/+ m): m is Z standard
#: errors of that count, at least MIN_MARGIN, at most MAX_MARGIN (see ``guess_bands``).
Z, MIN_MARGIN, MAX_MARGIN = 6.0, 0.02, 0.5
#: A tensor where more than 1/DENSE_SHARE of the values reach the band is counted in place (no gathers); CHUNK: elements per step.
DENSE_SHARE, CHUNK = 8, 1 << 22
#: Widest band histogrammed with ``bincount`` (a dense array of this many cells); wider bands are sorted.
DENSE_CELLS = 1 << 22

Band = tuple[int, int]  # [lo, hi) as float32 bit patterns of |value|; lo >= SMALLEST_CODE (smaller values never count)


def _spans(numel: int) -> list[tuple[int, int]]:
    """Evenly spread flat index ranges to sample a tensor at (all of it when small)."""
    if numel <= 4 * SAMPLE_SPANS * SAMPLE_WIDTH:
        return [(0, numel)] if numel else []
    step = numel // SAMPLE_SPANS
    return [(i * step, i * step + SAMPLE_WIDTH) for i in range(SAMPLE_SPANS)]


def guess_bands(
    base: ModelFolder, sources: Sequence[ValueSource], tensors: Sequence[str], top_k: Sequence[float], population: int
) -> dict[tuple[str, float], Band]:
    """Per (expert, k), the float32 bit patterns likely to hold the threshold, from weighted samples of every layer tensor.

    The band runs from where the sampled count from the top reaches K x (1 + m) to where it reaches
    K x (1 - m), m = ``Z`` standard errors of that count (each sampled span a cluster: neighbouring
    values may share a scale), at least ``MIN_MARGIN``: the band holds about 2m x K values, so on
    continuous deltas its width, and what is stored per tensor, shrinks as the sample grows rather
    than growing with the model. On deltas with many ties it can be one value wide. Experts that
    cannot be sampled (LoRA adapters) get the whole range: every non-zero value is histogrammed,
    which ``cap`` bounds.
    """
    codes: dict[str, list[np.ndarray]] = {s.name: [] for s in sources}
    weights: dict[str, list[np.ndarray]] = {s.name: [] for s in sources}
    spans_of: dict[str, list[np.ndarray]] = {s.name: [] for s in sources}  # per tensor, its spans' lengths
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
            codes[src.name].append(torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).abs_().view(torch.int32).numpy())
            weights[src.name].append(np.full(v.numel(), numel / taken))
            spans_of[src.name].append(np.array([b - a for a, b in spans]))
    out: dict[tuple[str, float], Band] = {}
    for e in codes:
        if usable[e] and codes[e]:
            c, w = np.concatenate(codes[e]), np.concatenate(weights[e])
            lengths = np.concatenate(spans_of[e])
            cluster = np.repeat(np.arange(lengths.size), lengths)  # each sample's span
            owner = np.repeat(np.arange(len(spans_of[e])), [x.size for x in spans_of[e]])  # each span's tensor
            # the weighted count of each distinct code: one sort of (code, tensor) keys (a tensor's samples share
            # a weight), five times faster than np.unique's argsort with its inverse; bincount then adds each
            # code's weights in the input's order (tensor by tensor), so the sums keep their bits
            which = np.repeat(np.arange(len(codes[e])), [x.size for x in codes[e]])
            shift = max(1, len(codes[e]).bit_length())
            keys = np.sort((c.astype(np.int64) << shift) | which)
            sorted_codes = keys >> shift
            first = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
            u = sorted_codes[first]
            per_tensor = np.array([x[0] if x.size else 0.0 for x in weights[e]])
            counts = np.bincount(np.cumsum(first) - 1, weights=per_tensor[keys & ((1 << shift) - 1)])
            from_top = np.cumsum(counts[::-1])  # codes descending
        else:
            u = from_top = np.empty(0)

        def code_reaching(count: float) -> int | None:
            i = int(np.searchsorted(from_top, count))
            code = int(u[::-1][i]) if i < from_top.size else None
            return code if code is not None and code >= SMALLEST_CODE else None  # zeros never count

        def margin(code: int | None) -> float:
            """Z standard errors of the sampled count of values >= ``code``, relative to it (cluster sampling)."""
            if code is None:
                return MAX_MARGIN
            s = np.bincount(cluster, weights=w * (c >= code), minlength=lengths.size)  # each span's weighted count
            g = np.bincount(owner).astype(float)
            s1, s2 = np.bincount(owner, weights=s), np.bincount(owner, weights=s * s)
            var = np.where(g > 1, (s2 - s1 * s1 / g) / np.maximum(g - 1, 1) * g, 0.0)  # G x the spans' sample variance
            return Z * math.sqrt(max(float(var.sum()), 0.0)) / max(float(s1.sum()), 1.0)

        for k in top_k:
            kc = k_count_of(k, population)
            m = min(MAX_MARGIN, max(MIN_MARGIN, margin(code_reaching(kc)))) if usable[e] and u.size else MAX_MARGIN
            lo = code_reaching(kc * (1 + m)) if usable[e] else None
            hi = code_reaching(kc * (1 - m)) if usable[e] else None
            lo = SMALLEST_CODE if lo is None else lo
            hi = TOP_CODE if hi is None else max(hi + 1, lo + 1)
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


_EMPTY = np.empty(0, dtype=np.int64)


def _single_counts(
    codes: np.ndarray, lo: int, hi: int, *, reach: int | None = None, scratch: np.ndarray | None = None
) -> tuple[int, np.ndarray, np.ndarray]:
    """(count above the band, distinct in-band offsets from lo, their counts) of one expert on one tensor.

    ``reach``: the count of codes >= lo where already known; ``scratch``: a bool buffer of codes' size.
    """
    above = int(np.count_nonzero(np.greater_equal(codes, hi, out=scratch)))
    if hi - lo == 1:  # one value: a count
        n_in = (reach if reach is not None else int(np.count_nonzero(np.greater_equal(codes, lo, out=scratch)))) - above
        return (above, np.zeros(1, np.int64), np.array([n_in], np.int64)) if n_in else (above, _EMPTY, _EMPTY)
    inside = codes[np.flatnonzero((codes >= lo) & (codes < hi))]  # an index gather: 3x a boolean mask's
    return (above, *_histogram(inside, lo, hi)) if inside.size else (above, _EMPTY, _EMPTY)


def _classes(codes: np.ndarray, lo: int, hi: int, present: np.ndarray) -> np.ndarray:
    """0 below the band, 1 + the index in ``present`` (sorted offsets from lo) inside it, len(present) + 1 above."""
    width = hi - lo
    if width <= DENSE_CELLS:  # a 4-byte table and ``take``: half the time of an intp table and fancy indexing
        lut = np.zeros(width + 2, dtype=np.int32)
        lut[present + 1] = np.arange(1, present.size + 1, dtype=np.int32)
        lut[width + 1] = present.size + 1
        index = np.clip(codes, lo - 1, hi)
        index -= lo - 1
        return np.take(lut, index)
    off = codes.astype(np.int64) - lo
    inside = np.searchsorted(present, np.clip(off, 0, width - 1)) + 1
    return np.where(off < 0, 0, np.where(off >= width, present.size + 1, inside))


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
        self.code = dict(bands)
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
        # This tensor's counts, published together under the lock: another thread may overflow and clear
        # the shared tables meanwhile, so nothing here is read back from them.
        single: dict[tuple[str, float, str], tuple[int, np.ndarray, np.ndarray]] = {}
        pair: dict[tuple[str, str, float, str], tuple[int, int, np.ndarray, np.ndarray]] = {}
        masks: dict[str, np.ndarray] = {}  # expert -> where it reaches its lowest band
        for i, e in enumerate(self.experts):
            if e not in absvals:  # unchanged here: every count is 0
                continue
            a = absvals[e].numpy().view(np.int32)  # non-negative floats order like their bit patterns
            mask = np.greater_equal(a, self.low[e], out=ws.buf(f"band{i}", a.size, torch.bool).numpy())
            reach = int(np.count_nonzero(mask))
            masks[e] = mask
            # counted on the values reaching the band, or on all of them where most do (dense ±lr deltas): no gathers
            codes = a if reach > a.size // DENSE_SHARE else a[np.flatnonzero(mask)]
            done: dict[Band, tuple[int, np.ndarray, np.ndarray]] = {}
            for k in self.top_k:
                band = self.code[(e, k)]
                if band not in done:
                    # a one-value band at the lowest edge: the values reaching it were just counted
                    known = reach if band[1] - band[0] == 1 and band[0] == self.low[e] else None
                    done[band] = _single_counts(
                        codes, *band, reach=known, scratch=ws.buf("scratch", codes.size, torch.bool).numpy()
                    )
                    stored += done[band][1].size
                single[(e, k, name)] = done[band]
        for a, b in self.pairs:
            if a not in masks or b not in masks:
                continue
            # only positions where both reach their lowest bands can hold shared members: where those are few (one
            # expert's values large, the other's small) the pair is counted on them alone, gathered
            both = np.logical_and(masks[a], masks[b], out=ws.buf("both", masks[a].size, torch.bool).numpy())
            va, vb = values[a].numpy(), values[b].numpy()
            if int(np.count_nonzero(both)) > both.size // DENSE_SHARE:  # most do: in place
                idx, known = None, both
                ca, cb = (absvals[x].numpy().view(np.int32) for x in (a, b))
                same = np.signbit(va, out=ws.buf("sign_a", va.size, torch.bool).numpy())
                same = np.equal(same, np.signbit(vb, out=ws.buf("sign_b", vb.size, torch.bool).numpy()), out=same)
            else:
                idx, known = np.flatnonzero(both), None
                ca, cb = (absvals[x].numpy().view(np.int32)[idx] for x in (a, b))
                same = np.signbit(va[idx]) == np.signbit(vb[idx])
            if not self.signed:
                same = np.zeros(ca.size, bool)
            done_pair: dict[tuple[Band, Band], tuple[int, int, np.ndarray, np.ndarray]] = {}
            for k in self.top_k:
                bands = (self.code[(a, k)], self.code[(b, k)])
                if bands not in done_pair:
                    # at both lowest edges, reaching both bands is where both masks hold
                    lowest = bands[0][0] == self.low[a] and bands[1][0] == self.low[b]
                    done_pair[bands] = self._pair_counts(
                        ca, cb, same, *bands, single[(a, k, name)][1], single[(b, k, name)][1],
                        reach=known if lowest else None,
                        scratch=ws.buf("scratch", ca.size, torch.bool).numpy(),
                    )
                    stored += done_pair[bands][2].size
                pair[(a, b, k, name)] = done_pair[bands]
        with self._lock:
            if self.overflow:
                return
            self.entries += stored
            if self.entries > self.cap:
                self.overflow = True
                self.single.clear()
                self.pair.clear()
                return
            self.single.update(single)
            self.pair.update(pair)

    @staticmethod
    def _pair_counts(
        ca: np.ndarray,
        cb: np.ndarray,
        same: np.ndarray,
        band_a: Band,
        band_b: Band,
        ua: np.ndarray,
        ub: np.ndarray,
        *,
        reach: np.ndarray | None = None,
        scratch: np.ndarray | None = None,
    ) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(sure shared members, of them same sign, open keys, their counts) over the positions given.

        Positions above both bands are counted; those in both bands, or in one and above the other, are
        classed per expert (one of the band's values present in this tensor, or above) and one ``bincount``
        over (class a, class b, same sign) gives the rest. ``reach``: where both reach their bands, if known;
        ``scratch``: a bool buffer of the positions' size.
        """
        (lo_a, hi_a), (lo_b, hi_b) = band_a, band_b
        if reach is None:
            reach = (ca >= lo_a) & (cb >= lo_b)
        if hi_a - lo_a == 1 and hi_b - lo_b == 1:  # one value each: reaching both bands is membership (finish checks t)
            agree = np.logical_and(reach, same, out=scratch)
            return int(np.count_nonzero(reach)), int(np.count_nonzero(agree)), _EMPTY, _EMPTY
        sure = reach & (ca >= hi_a) & (cb >= hi_b)
        n_sure, n_agree = int(np.count_nonzero(sure)), int(np.count_nonzero(sure & same))
        open_ = np.flatnonzero(reach & ~sure)  # in both bands, or in one and above the other: histogrammed
        ca, cb, same = ca[open_], cb[open_], same[open_]
        na, nb = ua.size + 2, ub.size + 2
        cells = na * nb * 2
        if cells > DENSE_CELLS:  # many distinct values in both bands: sort the open positions' keys instead
            ka = np.minimum(ca, hi_a).astype(np.int64) - lo_a
            kb = np.minimum(cb, hi_b).astype(np.int64) - lo_b
            u, c = np.unique((ka << 32) | (kb << 1) | same, return_counts=True)
            return n_sure, n_agree, u, c
        h = np.zeros(cells, dtype=np.int64)
        for start in range(0, ca.size, CHUNK):  # chunks: the class arrays stay small however large the tensor
            part = slice(start, start + CHUNK)
            key = _classes(ca[part], lo_a, hi_a, ua) * (nb * 2)
            key += _classes(cb[part], lo_b, hi_b, ub) * 2
            key += same[part]
            h += np.bincount(key, minlength=cells)
        h = h.reshape(na, nb, 2)  # open positions only: none below a band, none above both
        nz = np.flatnonzero(h)
        ia, ib, sign = np.unravel_index(nz, h.shape)
        ka = np.append(ua, hi_a - lo_a)[ia - 1]  # a band value's offset, or the band's width for "above"
        kb = np.append(ub, hi_b - lo_b)[ib - 1]
        return n_sure, n_agree, (ka.astype(np.int64) << 32) | (kb.astype(np.int64) << 1) | sign, h.reshape(-1)[nz]

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
                    if lo != SMALLEST_CODE:  # not every non-zero value was seen
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
                    result.n[(e, k, t)] = (
                        0 if entry is None or cuts[(e, k)].mode == "empty" else (entry[0] + int(entry[2][entry[1] >= m].sum()))
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
