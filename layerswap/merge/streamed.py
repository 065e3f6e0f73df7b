"""Task arithmetic and TIES on a tensor too large to hold its task vectors: chunk by chunk from the files.

In memory, TIES on one tensor holds the base and every expert's float32 delta at once: 3 x 0.67 GB for
Gemma 3 270M's embedding, 3 x 2.1 GB for Llama-3.1-8B's, on top of a sweep's loaded model. Every step
after the trim's cut is elementwise, and the cut itself comes from two histogram passes
(:class:`~layerswap.merge.methods._math.MagnitudeCut`), so the same tensor, bit for bit, comes from
reading the tensor in chunks: two passes for the experts' cuts, then one that trims, weights, elects,
averages and adds the base chunk by chunk into the target (a sweep's model parameter, or a new tensor).
Memory: the experts' and the base's chunks (16 MiB each) and two 65,536-cell counts per expert. The
files are read three times instead of once; from the page cache that costs less than the allocation
it saves.

It applies where the in-memory path would take the histogram cut too (above ``_TOPK_MAX`` entries: below
it ``torch.topk`` picks among tied magnitudes differently), to the methods whose formula is exactly
trim-weight-mix (``TaskVectorMethod`` with ``sparsify`` None or ``"magnitude"``: task arithmetic, TIES,
LiNeS), and to full checkpoints read from files (a LoRA expert's delta is a product of two matrices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from layerswap.merge.methods import _math
from layerswap.merge.methods._weighted import TaskVectorMethod
from layerswap.merge.ops import BASE, Combine


@dataclass(frozen=True)
class SpanReader:
    """Flat chunks of one tensor of each source: ``read(label, start, stop)`` is a new float32 tensor."""

    shape: torch.Size
    device: torch.device
    read: Callable[[str, int, int], torch.Tensor]

    @property
    def numel(self) -> int:
        return self.shape.numel()


def streams(method: object, op: Combine, numel: int) -> bool:
    """Whether ``op`` on a tensor of ``numel`` entries is computed chunk by chunk (see the module docstring)."""
    return (
        isinstance(method, TaskVectorMethod)
        and type(method).combine is TaskVectorMethod.combine
        and type(method).sparsifier is TaskVectorMethod.sparsifier
        and method.sparsify in (None, "magnitude")
        and numel > _math._TOPK_MAX
    )


def combine_streamed(method: TaskVectorMethod, op: Combine, reader: SpanReader, out: torch.Tensor) -> torch.Tensor:
    """``base + lam * mix(w_i * trim(expert_i - base))`` written chunk by chunk into ``out`` (flat-viewable,
    any float dtype: each chunk is rounded to it as a whole tensor's copy would be)."""
    labels = [label for label, _ in op.weights]
    weights = [float(w) for _, w in op.weights]
    target = out.view(-1)
    cuts = _cuts(op, reader, labels) if method.sparsify == "magnitude" else [None] * len(labels)
    ties_left = [c[1] if c is not None else 0 for c in cuts]
    for start, stop, base, deltas in _delta_chunks(reader, labels):
        taus = []
        for i, tau in enumerate(deltas):
            if cuts[i] is not None:
                ties_left[i] = _math.trim_chunk(tau, cuts[i][0], ties_left[i])
            taus.append(tau.mul_(weights[i]))
        mixed = _math.mix_task_vectors(taus, weights, consensus=method.consensus, normalize=op.normalize, lam=op.lam)
        target[start:stop].copy_(mixed.add_(base))
    return out


def _delta_chunks(reader: SpanReader, labels: Sequence[str]) -> Iterator[tuple[int, int, torch.Tensor, list[torch.Tensor]]]:
    """(start, stop, the base's chunk, each label's ``expert - base`` chunk), ``_math._CHUNK`` entries at a time."""
    for start in range(0, reader.numel, _math._CHUNK):
        stop = min(start + _math._CHUNK, reader.numel)
        base = reader.read(BASE, start, stop)
        yield start, stop, base, [reader.read(label, start, stop).sub_(base) for label in labels]


def _cuts(op: Combine, reader: SpanReader, labels: Sequence[str]) -> list[tuple[int, int] | None]:
    """Each expert's trim cut (None where its density keeps everything), from two passes over the files."""
    densities = op.densities or (1.0,) * len(labels)
    counters = {
        label: _math.MagnitudeCut(max(1, int(d * reader.numel))) for label, d in zip(labels, densities, strict=True) if d < 1.0
    }
    if not counters:  # every density keeps everything: nothing to read
        return [None] * len(labels)
    for _, _, _, deltas in _delta_chunks(reader, list(counters)):
        for counter, delta in zip(counters.values(), deltas, strict=True):
            counter.add_high(delta)
    for counter in counters.values():
        counter.settle_high()
    for _, _, _, deltas in _delta_chunks(reader, list(counters)):
        for counter, delta in zip(counters.values(), deltas, strict=True):
            counter.add_low(delta)
    return [counters[label].result() if label in counters else None for label in labels]
