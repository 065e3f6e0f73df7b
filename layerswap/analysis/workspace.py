"""Reused buffers and thread-count-independent reductions for the analysis's streaming passes.

A pass reads each tensor into float32 buffers that live for the whole pass (fresh buffers of
hundreds of MB cost more in page faults, and in reclaiming page cache to back them, than the
arithmetic on them), and reduces with the bits of torch's own two-thread reductions whatever
the number of workers. The phase outside the transformer layers visits the largest tensors one at a
time and splits each in two halves between two workers; the layer phase's workers then carve their
buffers out of that phase's memory (:class:`Arena`), already backed by pages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from layerswap.io import ModelFolder, TensorInfo, read_tensor_into
from layerswap.io.reader import mapped_tensor

#: Tensors from this size on are split in two halves between two workers in the phase outside the layers.
HALVES_FROM = 1 << 20
#: Elements converted per step when a tensor is read over a buffer (a 16 MiB float32 scratch per worker).
_OVER_CHUNK = 4 << 20
#: Arena slices start on this many bytes (cache lines, and every dtype's alignment).
_ALIGN = 64


def worker_pool(workers: int, reductions: Reductions) -> ThreadPoolExecutor:
    """A pool whose workers run their ops on one thread when ``reductions`` emulates torch's split.

    MKL keeps its thread count per thread: a new thread that has not yet run an op through torch's own
    pool would split a ``dot`` over two MKL threads, and the two-way emulation would lose its bits.
    """
    if reductions.emulate:
        return ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))
    return ThreadPoolExecutor(max_workers=workers)


def _pooled_halves(pool: ThreadPoolExecutor, n: int, op: Callable[[int, int], object]) -> list[object]:
    """``[op(0, h), op(h, n)]`` at ``h = (n + 1) // 2`` (the split of torch's two-thread reductions), on two workers."""
    h = (n + 1) // 2
    return list(pool.map(lambda r: op(*r), ((0, h), (h, n))))


class Arena:
    """Memory already written once (the phase outside the layers' buffers), handed out in slices.

    The layer phase's per-worker buffers are far smaller than the embedding's: taking them from here
    instead of fresh allocations spares a page fault (and, with a full page cache, a reclaim) per page.
    Slices are never returned; :meth:`take` gives None when what is left is too small.
    """

    def __init__(self, blocks: Sequence[torch.Tensor]) -> None:
        self._blocks = [b.view(torch.uint8) for b in blocks if b.is_contiguous()]
        self._used = [0] * len(self._blocks)
        self._lock = threading.Lock()

    def take(self, n: int, dtype: torch.dtype) -> torch.Tensor | None:
        """A flat ``dtype`` tensor of ``n`` elements carved from the arena, or None if none is left that large."""
        nbytes = n * torch.empty(0, dtype=dtype).element_size()
        with self._lock:
            for i, block in enumerate(self._blocks):
                start = -(-self._used[i] // _ALIGN) * _ALIGN
                if start + nbytes <= block.numel():
                    self._used[i] = start + nbytes
                    return block[start : start + nbytes].view(dtype)
        return None


class Workspace:
    """Flat buffers reused for every tensor of a pass (grown to the largest tensor seen, released on demand).

    Fresh multi-hundred-MB tensors cost more in page faults than the arithmetic on them, so the
    passes read and compute into these buffers instead.
    """

    def __init__(self, arena: Arena | None = None, least: int = 0) -> None:
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._arena = arena
        self._least = least  # buffers taken from the arena hold at least this many elements (no regrowth)
        #: two workers that take the two halves of each large tensor (the phase outside the layers, one tensor at a time)
        self.pool: ThreadPoolExecutor | None = None

    def halves(self, n: int, op: Callable[[int, int], object]) -> list[object]:
        """``op(start, stop)`` on the two halves of a flat range of ``n`` (at ``(n + 1) // 2``, the split of
        :class:`Reductions`), at once on :attr:`pool`'s two workers; on the whole range where there is no pool."""
        if self.pool is None or n < HALVES_FROM:
            return [op(0, n)]
        return _pooled_halves(self.pool, n, op)

    def buf(self, key: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The first ``n`` elements of buffer ``key`` (flat), grown if it is smaller."""
        tensor = self._bufs.get((key, dtype))
        if tensor is None or tensor.numel() < n:
            self._bufs.pop((key, dtype), None)
            taken = self._arena.take(max(n, self._least), dtype) if self._arena is not None else None
            tensor = self._bufs[(key, dtype)] = taken if taken is not None else torch.empty(n, dtype=dtype)
        return tensor[:n]

    def hand_over(self) -> Arena:
        """Give up every buffer as an :class:`Arena` for the next phase's workspaces (largest first)."""
        arena = Arena(sorted(self._bufs.values(), key=lambda t: -t.numel() * t.element_size()))
        self._bufs.clear()
        return arena

    def read(self, info: TensorInfo, key: str) -> torch.Tensor:
        """Read a tensor as flat float32 into buffer ``key`` (each half by its worker where there is a pool)."""
        return self.read_into(info, self.buf(key, info.numel))

    def read_into(self, info: TensorInfo, out: torch.Tensor) -> torch.Tensor:
        """Read a tensor as flat float32 into ``out`` (flat, ``info.numel`` long; halves on the pool as :meth:`read`)."""
        if self.pool is None or info.numel < HALVES_FROM:
            return read_tensor_into(info, out).reshape(-1)
        with mapped_tensor(info) as src:
            self.halves(info.numel, lambda a, b: out[a:b].copy_(src[a:b]))
        return out

    def read_minus(self, info: TensorInfo, minus: torch.Tensor, key: str) -> torch.Tensor:
        """``tensor - minus`` as flat float32 in buffer ``key`` (read into float32, then subtracted in place)."""
        out = self.read(info, key)
        o, m = out.numpy(), minus.numpy()
        # numpy on one thread per half: exact, and no thread-pool stalls
        self.halves(o.size, lambda a, b: np.subtract(o[a:b], m[a:b], out=o[a:b]))
        return out

    def read_minus_over(self, info: TensorInfo, minus: torch.Tensor) -> torch.Tensor:
        """``tensor - minus`` written over ``minus`` (flat float32), converted chunk by chunk through a small scratch:
        the same bits as :meth:`read_minus` without a buffer of the tensor's size."""
        n = info.numel
        if n == 0:
            return minus
        chunk = min(n, _OVER_CHUNK)
        scratch = [self.buf(f"over{j}", chunk) for j in range(2)]  # made here: workers must not grow the dict
        m = minus.numpy()
        with mapped_tensor(info) as src:

            def over(lo: int, hi: int) -> None:
                tmp = scratch[0 if lo == 0 else 1]
                for a in range(lo, hi, chunk):
                    b = min(a + chunk, hi)
                    t = tmp[: b - a].copy_(src[a:b]).numpy()
                    np.subtract(t, m[a:b], out=m[a:b])

            self.halves(n, over)
        return minus

    @classmethod
    def for_tensors(cls, folders: Sequence[ModelFolder], names: Sequence[str]) -> Workspace:
        """A workspace (buffers are sized on first use; the arguments are kept for callers)."""
        return cls()


class Reductions:
    """Float32 ``dot`` and ``sum`` with the bits of torch's own (two-thread) reductions, each op on one thread.

    Torch splits a reduction over its threads (a sum above 32,768 elements, MKL's dot from 8,192
    on) and adds the halves, so the bits of a float32 sum depend on the thread count. On two
    threads (this project's machines) the pass runs every op on one thread, where shared cores do
    not stall a thread pool, and reproduces the two-way split exactly: each half reduced, the two
    halves added in float32 (with :attr:`pool` set, the two halves on two one-thread workers:
    :func:`worker_pool`). A probe checks that on the machine at hand first; where it does not
    hold (other thread counts, another BLAS), the pass keeps torch's threads and calls them as they are.
    """

    SUM_SPLIT, DOT_SPLIT = 32768, 8192  # above / from these sizes the two-thread reductions split

    def __init__(self) -> None:
        self.threads = torch.get_num_threads()
        self.emulate = False
        #: set while tensors go one at a time (outside the layers): the two halves of a reduction run at once
        self.pool: ThreadPoolExecutor | None = None
        if self.threads == 2:
            self.emulate = self._probe()

    def _probe(self) -> bool:
        gen = torch.Generator().manual_seed(0)
        cases = [
            (n, torch.randn(n, generator=gen), torch.randn(n, generator=gen))
            for n in (5000, 8191, 8192, 32768, 32769, 100003, 1 << 20)
        ]
        native = [(torch.dot(x, y), x.sum()) for _, x, y in cases]
        torch.set_num_threads(1)
        try:
            self.emulate = True
            ours = [(self.dot(x, y), self.sum(x)) for _, x, y in cases]
        finally:
            torch.set_num_threads(self.threads)
        return all(float(a) == b and float(c) == d for (a, c), (b, d) in zip(native, ours, strict=True))

    def __enter__(self) -> Reductions:
        if self.emulate:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.emulate:
            torch.set_num_threads(self.threads)

    def dot(self, x: torch.Tensor, y: torch.Tensor) -> float:
        n = x.numel()
        if not self.emulate or n < self.DOT_SPLIT:
            return float(torch.dot(x, y))
        return float(self._halves(n, lambda a, b: torch.dot(x[a:b], y[a:b])))

    def sum(self, x: torch.Tensor) -> float:
        n = x.numel()
        if not self.emulate or n <= self.SUM_SPLIT:
            return float(x.sum())
        return float(self._halves(n, lambda a, b: x[a:b].sum()))

    def _halves(self, n: int, op: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """The two halves' float32 results added in float32, as torch's two threads do (on :attr:`pool` when set)."""
        if self.pool is None or n < HALVES_FROM:
            h = (n + 1) // 2
            return op(0, h) + op(h, n)
        first, second = _pooled_halves(self.pool, n, op)
        return first + second
