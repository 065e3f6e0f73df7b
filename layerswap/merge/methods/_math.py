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


def trim_magnitude(delta: torch.Tensor, density: float, *, inplace: bool = False) -> torch.Tensor:
    """Keep the ``max(1, int(density * numel))`` entries of largest magnitude, zero the rest
    (in ``delta`` itself with ``inplace``, which saves a full copy of a 2 GB embedding)."""
    if density >= 1.0 or delta.numel() == 0:
        return delta if inplace else delta.clone()
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    # topk keeps exactly k entries, as mergekit's sort does. Entries whose magnitude equals the cut's
    # are kept in an order neither tool defines: on the demo's real pair 764 of 2.0e8 layer entries,
    # all at the cut, go the other way in mergekit (benchmarks/results/merge_real.md). Copying its
    # unstable argsort would cost more than the rest of TIES, for an order torch does not define.
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    mask[keep] = True
    del keep
    return delta.mul_(mask.view(delta.shape)) if inplace else delta * mask.view(delta.shape)


def dare_mask(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's keep mask: one uniform draw per entry, kept below ``density`` (a separate function so a
    test can inject the same mask into layerswap and mergekit, whose random streams differ)."""
    return torch.rand(delta.shape, generator=generator, device=delta.device) < density


def dare_drop(
    delta: torch.Tensor, density: float, generator: torch.Generator | None, rescale: str = "density"
) -> torch.Tensor:
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
    and every intermediate is updated in place: at most the task vectors, the result, the divisor
    and one transient per entry are alive at once. The inputs are left untouched unless
    ``consume`` says they are the caller's fresh float32 reads, free to be overwritten.
    """
    taus: list[torch.Tensor | None] = []
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
        taus.append(d.mul_(float(weights[i])) if d is not given else d * float(weights[i]))
        del given, d  # a generator's delta is freed before the next one is read
    if len(taus) != len(weights):
        raise ValueError(f"{len(taus)} deltas for {len(weights)} weights")
    divisor = torch.zeros_like(taus[0]) if normalize and consensus else None
    positive = elect_positive(taus) if consensus else None
    mixed: torch.Tensor | None = None
    for i, w in enumerate(weights):
        tau = taus[i]
        taus[i] = None
        assert tau is not None
        if positive is not None:
            agree = torch.where(positive, tau > 0, tau < 0)  # nonzero and of the elected sign
            tau.mul_(agree)
            if divisor is not None:
                divisor.add_(agree, alpha=float(w))
            del agree
        mixed = tau if mixed is None else mixed.add_(tau)
        del tau
    assert mixed is not None
    if divisor is not None:
        divisor.masked_fill_(divisor == 0, 1.0)
        mixed.div_(divisor)
    elif normalize and not consensus:
        total = float(sum(weights))
        if abs(total) >= 1e-8:
            mixed.div_(total)
    if lam != 1.0:
        mixed.mul_(lam)
    return mixed
