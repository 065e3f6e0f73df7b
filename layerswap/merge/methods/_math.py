"""The tensor math the merge methods share, on float32 tensors, one tensor at a time.

Conventions chosen where the reference implementations differ (see docs/merge.md):

- TIES trims each delta to its ``k = max(1, int(density * numel))`` largest magnitudes, weights
  it, elects the sign per entry as the sign of the *weighted sum* of trimmed deltas (total mass;
  0 counts as +), and takes the disjoint mean dividing by the *summed weights* of the agreeing
  entries (mergekit; PEFT divides by their count: the two agree when all weights are 1).
- DARE keeps each entry with probability ``density`` and divides the survivors by ``density``
  (the paper and PEFT; mergekit instead rescales to the original L1 norm, offered as ``rescale: l1``).
- Random masks come from a generator seeded per (seed, tensor name, expert label), so a merge is
  reproducible and independent of tensor order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import torch


def stable_seed(seed: int, name: str, label: str) -> int:
    """A 63-bit seed from (seed, tensor, expert) that does not depend on Python's hash salt."""
    digest = hashlib.blake2b(f"{seed}\0{name}\0{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def blend(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i * t_i`` in float32 (linear souping, transition layers, ``average``)."""
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t.to(torch.float32), alpha=float(w))
    return out


#: Entries per chunk of the magnitude passes: 16 MiB of float32, whatever the tensor's size.
_CHUNK = 1 << 22
_CELLS = 1 << 16


def _magnitude_bits(chunk: torch.Tensor) -> torch.Tensor:
    """``|chunk|`` as int32 bit patterns: non-negative floats order like their bits (NaN above inf)."""
    return chunk.abs().view(torch.int32)


class MagnitudeCut:
    """The k-th largest ``|value|`` of a tensor fed in chunks, twice (see :func:`magnitude_cut`): the
    chunks may come from memory or, for a tensor too large to hold, from its files (streamed merges)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.high = torch.zeros(_CELLS, dtype=torch.int64)
        self.low = torch.zeros(_CELLS, dtype=torch.int64)
        self.bucket = -1
        self.above = 0

    def add_high(self, chunk: torch.Tensor) -> None:
        """Pass 1: count the chunk's magnitudes by their top 16 bits."""
        self.high += torch.bincount(_magnitude_bits(chunk) >> 16, minlength=_CELLS).cpu()

    def settle_high(self) -> None:
        """After pass 1: the bucket that holds the k-th value, and how many entries lie above it."""
        from_top = self.high.flip(0).cumsum(0)  # entries in this bucket or above, buckets descending
        j = int(torch.searchsorted(from_top, self.k))
        self.bucket = _CELLS - 1 - j
        self.above = int(from_top[j]) - int(self.high[self.bucket])

    def add_low(self, chunk: torch.Tensor) -> None:
        """Pass 2: count the low 16 bits of the chunk's magnitudes inside that bucket."""
        bits = _magnitude_bits(chunk)
        self.low += torch.bincount(bits[(bits >> 16) == self.bucket] & 0xFFFF, minlength=_CELLS).cpu()

    def result(self) -> tuple[int, int]:
        """(bit pattern of the k-th largest magnitude, how many entries equal to it are among the k largest)."""
        from_top = self.low.flip(0).cumsum(0)
        j = int(torch.searchsorted(from_top, self.k - self.above))
        cut = (self.bucket << 16) | (_CELLS - 1 - j)
        greater = self.above + int(from_top[j]) - int(self.low[_CELLS - 1 - j])
        return cut, self.k - greater


def magnitude_cut(flat: torch.Tensor, k: int) -> tuple[int, int]:
    """The bit pattern of the k-th largest ``|value|`` of a flat float32 tensor, and how many entries
    equal to it are among the k largest.

    Two histogram passes over the bit patterns, in chunks: the top 16 bits, then the low 16 bits
    inside the one bucket that holds the k-th value. Memory is two 65,536-cell counts and a chunk,
    where ``torch.topk`` builds a (value, index) pair per entry: 2.7 GB for Gemma 3 270M's embedding,
    8.4 GB for Llama-3.1-8B's.
    """
    cut = MagnitudeCut(k)
    for chunk in flat.split(_CHUNK):
        cut.add_high(chunk)
    cut.settle_high()
    for chunk in flat.split(_CHUNK):
        cut.add_low(chunk)
    return cut.result()


def trim_chunk(chunk: torch.Tensor, cut: int, ties_left: int) -> int:
    """Zero a chunk's entries below the cut in place, keeping the first ``ties_left`` entries equal to it
    (chunks taken in memory order); returns how many tied entries the next chunks may still keep."""
    bits = _magnitude_bits(chunk)
    keep = bits > cut
    if ties_left > 0:
        at_cut = (bits == cut).nonzero().view(-1)[:ties_left]
        keep[at_cut] = True
        ties_left -= at_cut.numel()
    chunk.masked_fill_(~keep, 0.0)
    return ties_left


#: Up to this many entries ``torch.topk`` picks the k largest (its (value, index) pairs cost at most
#: 256 MiB there); above it, the histogram cut of :func:`magnitude_cut` does, in bounded memory.
_TOPK_MAX = 1 << 24


def trim_magnitude(delta: torch.Tensor, density: float, *, inplace: bool = False) -> torch.Tensor:
    """Keep the ``max(1, int(density * numel))`` entries of largest magnitude, zero the rest
    (in ``delta`` itself with ``inplace``, which saves a full copy of a 2 GB embedding).

    Exactly k entries are kept, as mergekit's sort keeps them. Which of the entries whose magnitude
    equals the cut's are kept is defined by neither tool: mergekit's unstable argsort and
    ``torch.topk`` agree on small tensors (the tests' models); on the demo's real pair 764 of 2.0e8
    layer entries, all at the cut, differ (``benchmarks/results/merge_real.md``). Above
    ``_TOPK_MAX`` entries, whose topk workspace would be 16 bytes per entry (2.7 GB for Gemma 3
    270M's embedding, 8.4 GB for Llama-3.1-8B's), the cut comes from :func:`magnitude_cut`, the tied
    entries kept are the first in memory order, and the mask is applied chunk by chunk.
    """
    if density >= 1.0 or delta.numel() == 0:
        return delta if inplace else delta.clone()
    k = max(1, int(density * delta.numel()))
    if inplace:
        out = delta if delta.is_contiguous() else delta.contiguous()
    else:
        out = delta.clone(memory_format=torch.contiguous_format)
    flat = out.view(-1)
    if flat.numel() <= _TOPK_MAX:
        mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat.abs(), k, sorted=False).indices] = True
        return out.mul_(mask.view(out.shape))
    cut, ties_left = magnitude_cut(flat, k)
    for chunk in flat.split(_CHUNK):
        ties_left = trim_chunk(chunk, cut, ties_left)
    return out


def dare_mask(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's keep mask: one uniform draw per entry, kept below ``density`` (a separate function so a
    test can inject the same mask into layerswap and mergekit, whose random streams differ)."""
    return torch.rand(delta.shape, generator=generator, device=delta.device) < density


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator | None, rescale: str = "density") -> torch.Tensor:
    """Keep each entry with probability ``density``; rescale by ``1/density``, to the L1 norm, or not."""
    if density >= 1.0:
        return delta.clone()
    keep = dare_mask(delta, density, generator)
    masked = delta * keep
    if rescale == "density":
        return masked.div_(density)
    if rescale == "l1":
        return rescale_l1(delta, masked)
    return masked


def rescale_l1(original: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """``masked`` scaled in place to the L1 norm of ``original`` (mergekit's ``rescale``; either norm
    below 1e-7 leaves it as it is)."""
    before, after = original.abs().sum(), masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked.mul_(before / after)


def elect_positive(weighted: Sequence[torch.Tensor]) -> torch.Tensor:
    """Where the total mass ``sum_i w_i * tau_i`` is >= 0 (the elected sign is +), as a one-byte mask.

    A running sum: one extra tensor, where ``torch.stack(...).sum(0)`` makes N.
    """
    total = weighted[0].clone()
    for t in weighted[1:]:
        total.add_(t)
    return total >= 0


def _consensus_mean(taus: list[torch.Tensor], weights: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES's sign election and disjoint mean over weighted task vectors, written into ``taus[0]``.

    Elementwise, so it runs chunk by chunk: the running sum, the elected sign, the agreement masks and
    the divisor exist for one chunk at a time (two full float32 copies and three masks of a 2 GB
    embedding before), with the same operations in the same order, hence the same bits.
    """
    flats = [t.view(-1) for t in taus]
    for start in range(0, flats[0].numel(), _CHUNK):
        parts = [f[start : start + _CHUNK] for f in flats]
        positive = elect_positive(parts)
        divisor = torch.zeros_like(parts[0]) if normalize else None
        acc = parts[0]
        for i, (part, w) in enumerate(zip(parts, weights, strict=True)):
            agree = torch.where(positive, part > 0, part < 0)  # nonzero and of the elected sign
            part.mul_(agree)
            if divisor is not None:
                divisor.add_(agree, alpha=float(w))
            if i:
                acc.add_(part)
        if divisor is not None:
            divisor.masked_fill_(divisor == 0, 1.0)
            acc.div_(divisor)
    return taus[0]


def combine_deltas(
    deltas: Iterable[torch.Tensor],
    weights: Sequence[float],
    *,
    sparsify: str | Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    densities: Sequence[float] | None = None,
    consensus: bool = False,
    normalize: bool = False,
    lam: float = 1.0,
    rescale: str = "density",
    generators: Sequence[torch.Generator | None] | None = None,
    consume: bool = False,
) -> torch.Tensor:
    """The merged task vector of task arithmetic, TIES and DARE (before adding the base).

    ``sparsify``: None, ``"magnitude"`` (TIES trim), ``"random"`` (DARE drop) or a function
    ``(expert index, delta) -> sparse delta`` (Breadcrumbs, DELLA) that may overwrite its float32 input.
    ``consensus``: TIES sign election and disjoint mean.
    ``normalize``: divide by summed weights (of agreeing entries under consensus).

    Memory is what limits merging a 7-8B model's embedding (500M entries, 2 GB per float32 copy),
    so ``deltas`` may be a generator (each delta is read only once the previous one is trimmed),
    and every intermediate is updated in place or made one chunk at a time: at most the task vectors
    (the result is written into the first) and a chunk's transients are alive at once. The inputs are left untouched unless
    ``consume`` says they are the caller's fresh float32 reads, free to be overwritten.
    """
    taus: list[torch.Tensor] = []
    for i, d in enumerate(deltas):
        given = None if consume else d
        d = d.to(torch.float32)
        if callable(sparsify):
            d = sparsify(i, d if d is not given else d.clone())
        elif sparsify == "magnitude":
            d = trim_magnitude(d, densities[i] if densities else 1.0, inplace=d is not given)
        elif sparsify == "random":
            gen = generators[i] if generators else None
            d = dare_drop(d, densities[i] if densities else 1.0, gen, rescale)
        taus.append((d.mul_(float(weights[i])) if d is not given else d * float(weights[i])).contiguous())
        del given, d  # a generator's delta is freed before the next one is read
    if len(taus) != len(weights):
        raise ValueError(f"{len(taus)} deltas for {len(weights)} weights")
    return mix_task_vectors(taus, weights, consensus=consensus, normalize=normalize, lam=lam)


def mix_task_vectors(
    taus: list[torch.Tensor], weights: Sequence[float], *, consensus: bool, normalize: bool, lam: float
) -> torch.Tensor:
    """The weighted (and trimmed) task vectors mixed into ``taus[0]``'s storage: TIES's sign election and
    disjoint mean, or their sum (divided by the summed weights with ``normalize``); times ``lam``.
    Elementwise, so whole tensors or matching chunks of them give the same bits. Empties ``taus``."""
    if consensus:
        mixed = _consensus_mean(taus, weights, normalize)  # into taus[0]'s storage
    else:
        mixed = taus[0]
        for tau in taus[1:]:
            mixed.add_(tau)
        if normalize:
            total = float(sum(weights))
            if abs(total) >= 1e-8:
                mixed.div_(total)
    taus.clear()
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed
