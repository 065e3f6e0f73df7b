"""Evaluate one plan operation for one tensor, from any source of float32 weights.

The on-disk merge reads sources lazily from safetensors (:class:`DiskSources`); the in-memory
merge reads them from a :class:`~layerswap.merge.memory.TensorCache`. Both give ``weight`` and
``delta`` per (label, tensor), so the reading lives here once; a :class:`Combine`'s formula is its
method's (:meth:`~layerswap.merge.methods.MergeMethod.combine`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from layerswap.errors import ConfigError
from layerswap.io import Checkpoint, DeltaView, LoraAdapter, ModelFolder, TensorInfo
from layerswap.io.reader import read_span
from layerswap.merge.methods import get_method
from layerswap.merge.ops import BASE, Blend, Combine, Op, Select

if TYPE_CHECKING:  # torch is imported on the first computed tensor: raw copies never need it
    import torch

    from layerswap.merge.streamed import SpanReader


class Sources(Protocol):
    #: Whether ``weight`` returns a new tensor on every call (one read, free to overwrite), or a held one.
    fresh_weights: bool

    def weight(self, label: str, name: str) -> torch.Tensor: ...

    def delta(self, label: str, name: str, base_weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """``expert - base`` in float32 as a new tensor: the merge overwrites it in place."""
        ...

    def span_reader(self, name: str, labels: Sequence[str]) -> SpanReader | None:
        """Chunks of tensor ``name`` of ``labels`` as ``weight`` would give them, or None where a source is no file."""
        ...


class DiskSources:
    """Base and experts opened lazily; LoRA experts seen as base + ``B @ A * scaling``."""

    fresh_weights = True  # every weight is a new read

    def __init__(self, base: ModelFolder | None, experts: Mapping[str, Checkpoint]) -> None:
        self.base = base
        self.experts = dict(experts)
        self.views: dict[str, DeltaView] = {}
        for label, ckpt in self.experts.items():
            if isinstance(ckpt, LoraAdapter) and base is None:
                raise ConfigError(f"expert {label!r} is a LoRA adapter: add base: PATH (its base model) to the config")
            if base is not None:
                self.views[label] = DeltaView(ckpt, base, label=f"expert {label}")

    def checkpoint(self, label: str) -> Checkpoint:
        if label == BASE:
            if self.base is None:
                raise ConfigError("this merge reads the base model: add base: PATH to the config")
            return self.base
        return self.experts[label]

    def weight(self, label: str, name: str) -> torch.Tensor:
        import torch

        if label == BASE:
            return self.checkpoint(BASE).get(name, torch.float32)
        if label in self.views:
            return self.views[label].weight(name, torch.float32)
        return self.experts[label].get(name, torch.float32)

    def delta(self, label: str, name: str, base_weight: torch.Tensor | None = None) -> torch.Tensor | None:
        return self.views[label].delta(name, base_weight)

    def span_reader(self, name: str, labels: Sequence[str]) -> SpanReader | None:
        return file_spans(name, {label: self.checkpoint(label) for label in labels})


def file_spans(
    name: str,
    checkpoints: Mapping[str, Checkpoint | None],
    device: torch.device | str = "cpu",
    dtypes: Callable[[TensorInfo], torch.dtype | None] = lambda info: None,
) -> SpanReader | None:
    """A :class:`SpanReader` over full checkpoints' files (None if one is a LoRA adapter or None): ``dtypes(info)``
    is the dtype each chunk is read in (None: as stored), then moved to ``device`` and made float32."""
    import torch

    from layerswap.merge.streamed import SpanReader

    if not all(isinstance(c, ModelFolder) for c in checkpoints.values()):
        return None
    infos = {label: c.info(name) for label, c in checkpoints.items()}

    def read(label: str, start: int, stop: int) -> torch.Tensor:
        info = infos[label]
        return read_span(info, start, stop, dtypes(info)).to(device).to(torch.float32)

    return SpanReader(torch.Size(next(iter(infos.values())).shape), torch.device(device), read)


def _streamed(op: Op, name: str, src: Sources) -> tuple[object, SpanReader] | None:
    """The method and chunk reader when ``op`` is computed chunk by chunk from the files (see ``merge/streamed.py``)."""
    if not isinstance(op, Combine) or not op.from_base:
        return None
    from layerswap.merge.streamed import streams

    method = get_method(op.method)
    reader = src.span_reader(name, [BASE, *(label for label, _ in op.weights)])
    return (method, reader) if reader is not None and streams(method, op, reader.numel) else None


def compute_into(op: Op, name: str, src: Sources, target: torch.Tensor) -> None:
    """Write the merged tensor ``name`` into ``target`` (a model's parameter): chunk by chunk where the
    operation streams, so no float32 copy of the tensor is made; otherwise computed whole and copied once."""
    from layerswap.merge.streamed import combine_streamed

    streamed = _streamed(op, name, src)
    if streamed is not None:
        combine_streamed(streamed[0], op, streamed[1], target)
    else:
        target.copy_(_compute_whole(op, name, src))


def compute(op: Op, name: str, src: Sources) -> torch.Tensor:
    """The merged float32 tensor ``name`` under ``op`` (a Select may return a cached tensor: do not mutate)."""
    import torch

    from layerswap.merge.streamed import combine_streamed

    streamed = _streamed(op, name, src)
    if streamed is None:
        return _compute_whole(op, name, src)
    reader = streamed[1]  # one float32 tensor, the result, instead of the base and every delta
    return combine_streamed(streamed[0], op, reader, torch.empty(reader.shape, dtype=torch.float32, device=reader.device))


def _compute_whole(op: Op, name: str, src: Sources) -> torch.Tensor:
    """``compute`` with every input tensor read whole."""
    import torch

    from layerswap.merge.methods._math import blend

    if isinstance(op, Select):
        return src.weight(op.source, name)
    if isinstance(op, Blend):
        return blend([src.weight(label, name) for label, _ in op.weights], [w for _, w in op.weights])
    if isinstance(op, Combine):
        method = get_method(op.method)
        if not op.from_base:  # the formula reads the experts' weights (fresh float32 copies)
            copy = not src.fresh_weights  # a held tensor is copied; a fresh read is already the formula's to overwrite
            weights = (src.weight(label, name).to(torch.float32, copy=copy) for label, _ in op.weights)
            return method.combine(op, name, weights, None)
        base = src.weight(BASE, name).to(torch.float32)

        def deltas():  # noqa: ANN202 - read one at a time: each is trimmed before the next is loaded
            for label, _ in op.weights:
                d = src.delta(label, name, base)
                yield torch.zeros_like(base) if d is None else d

        return method.combine(op, name, deltas(), base).add_(base)
    raise TypeError(f"unknown plan operation {op!r}")
