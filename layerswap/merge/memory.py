"""Merging in memory, for the merge-then-evaluate loop.

A :class:`TensorCache` serves base and expert tensors to the merge: by default straight from their
safetensors files (``store="mapped"``: each tensor is read when a candidate needs it, from the page
cache once the files have been read, in its stored dtype, so bf16 stays bf16 until a blend converts
the one tensor it is blending to float32), or held in memory after one read (``store="memory"``:
three models' worth of RAM, today's behaviour before scale mattered). Both give the same merged
tensors, bit for bit. :func:`apply_merge` then writes a candidate's tensors into an already loaded
``transformers`` model in place, and remembers which operation produced each parameter, so the
next candidate only touches the tensors whose source changed: moving from ``bottom=4`` to
``bottom=5`` copies one layer, not the model.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from layerswap.errors import ConfigError, IncompatibleModelsError
from layerswap.io import (
    Architecture,
    Checkpoint,
    LoraAdapter,
    ModelFolder,
    TensorInfo,
    check_compatible,
    open_checkpoint,
    open_model,
)
from layerswap.merge.config import MergeConfig
from layerswap.merge.engine import DiskSources, compute, compute_into, file_spans
from layerswap.merge.ops import BASE, MergePlan
from layerswap.merge.plan import build_plan
from layerswap.merge.streamed import SpanReader
from layerswap.progress import progress

Store = Literal["mapped", "memory"]


class TensorCache:
    """Base and expert tensors for in-memory merges: read from the files on demand, or held after one read.

    ``dtype=torch.float32`` (default) blends exact float32 inputs (a stored bf16 tensor converts to
    float32 exactly, so it is read as bf16 and converted only when a blend needs it); the model's
    dtype (e.g. bfloat16) rounds float32 checkpoints to it first. ``store="mapped"`` (default) holds
    nothing: memory is the tensor being merged (at most a few float32 copies of the largest tensor);
    ``store="memory"`` holds every source tensor (refused before loading when RAM cannot hold them).
    LoRA experts are held as their float32 deltas either way (they are small).
    """

    def __init__(
        self,
        experts: Mapping[str, str | os.PathLike[str]],
        base: str | os.PathLike[str] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        store: Store = "mapped",
    ) -> None:
        self.base: ModelFolder | None = open_model(base) if base is not None else None
        self.experts: dict[str, Checkpoint] = {label: open_checkpoint(p) for label, p in experts.items()}
        full = [e for e in self.experts.values() if isinstance(e, ModelFolder)]
        ref = self.base if self.base is not None else (full[0] if full else None)
        if ref is None:
            raise ConfigError("LoRA experts need their base model: pass base=PATH")
        for label, ckpt in self.experts.items():
            if ckpt is not ref:
                check_compatible(ref, ckpt, label=f"expert {label}")
        self.reference: ModelFolder = ref
        if store not in ("mapped", "memory"):
            raise ConfigError(f"unknown tensor store {store!r}: use 'mapped' (read on demand) or 'memory' (hold every tensor)")
        self.dtype = dtype
        self.device = torch.device(device)
        self.store: Store = store
        self._disk = DiskSources(self.base, self.experts)
        self._tensors: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: MergeConfig, **kwargs) -> TensorCache:  # noqa: ANN003
        return cls(config.experts, config.base, **kwargs)

    @property
    def architecture(self) -> Architecture:
        return self.reference.architecture

    @property
    def num_layers(self) -> int:
        return self.reference.num_layers

    def names(self) -> list[str]:
        return self.reference.names()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def held_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes that ``store="memory"`` would hold in ``dtype`` (default: the cache's): every full source tensor."""
        size = torch.empty(0, dtype=dtype or self.dtype).element_size()
        folders = [c for c in [self.base, *self.experts.values()] if isinstance(c, ModelFolder)]
        return sum(size * f.num_parameters for f in folders)

    def largest_float32(self) -> int:
        """Bytes of the largest tensor in float32 (the unit of a mapped merge's working memory)."""
        return 4 * max((self.reference.info(n).numel for n in self.names()), default=0)

    def check_fits(self, available: int | None = None) -> None:
        """Refuse ``store="memory"`` before loading when the held tensors would not fit in available RAM."""
        if self.store != "memory" or self.device.type != "cpu":
            return
        if available is None:
            import psutil

            available = psutil.virtual_memory().available
        need = self.held_bytes()
        if need > available:
            name = str(self.dtype).removeprefix("torch.")
            raise ConfigError(
                f"holding base and experts in memory as {name} needs {need / 1e9:.1f} GB but {available / 1e9:.1f} GB is available: "
                f"use store 'mapped' (reads each tensor from the files when needed, about {2 * self.largest_float32() / 1e9:.1f} GB)"
            )

    def paths(self) -> dict[str, str]:
        out = {label: str(c.path.resolve()) for label, c in self.experts.items()}
        if self.base is not None:
            out[BASE] = str(self.base.path.resolve())
        return out

    def check_model_fits(self, dtype: torch.dtype, device: str | torch.device = "cpu", *, available: int | None = None) -> None:
        """Refuse, before loading, a model (the reference checkpoint in ``dtype`` on ``device``) that memory cannot hold.

        A sweep holds that model plus, while merging, about two float32 copies of the largest tensor.
        """
        device = torch.device(device)
        if available is None:
            if device.type == "cuda":
                available = torch.cuda.mem_get_info(device)[0]
            elif device.type == "cpu":
                import psutil

                available = psutil.virtual_memory().available
            else:
                return
        params = self.reference.num_parameters
        size = torch.empty(0, dtype=dtype).element_size()
        need = params * size + 2 * self.largest_float32()
        if need <= available:
            return
        where = "GPU memory" if device.type == "cuda" else "RAM"
        name = str(dtype).removeprefix("torch.")
        half = params * 2 + 2 * self.largest_float32()
        hint = (
            f"load it as bfloat16 (dtype: bfloat16, {half / 1e9:.1f} GB)"
            if size > 2 and half <= available
            else "no dtype fits here: use a machine (or GPU) with more memory"
        )
        raise ConfigError(
            f"the model {self.reference.path.name} in {name} needs {need / 1e9:.1f} GB of {where} "
            f"({params / 1e9:.2f}e9 parameters plus two float32 copies of its largest tensor to merge), "
            f"{available / 1e9:.1f} GB is available: {hint}"
        )

    def _read_dtype(self, info: TensorInfo) -> torch.dtype | None:
        """The cache's dtype, or None (as stored) for a float32 cache where the stored dtype converts exactly."""
        keep = self.dtype == torch.float32 and info.torch_dtype.is_floating_point and torch.finfo(info.torch_dtype).bits <= 32
        return None if keep else self.dtype

    def _read(self, ckpt: ModelFolder, name: str) -> torch.Tensor:
        """One tensor from the files: in the cache's dtype, or (float32 cache) its own dtype where that converts exactly."""
        return ckpt.get(name, self._read_dtype(ckpt.info(name))).to(self.device)

    def _load(self, label: str, name: str) -> torch.Tensor | None:
        key = (label, name)
        if key not in self._tensors:
            ckpt = self.base if label == BASE else self.experts[label]
            if isinstance(ckpt, LoraAdapter):
                d = self._disk.delta(label, name)
                if d is None:
                    return None
                self._tensors[key] = d.to(self.device, torch.float32)
            else:
                assert ckpt is not None
                if self.store == "mapped":
                    return self._read(ckpt, name)
                self._tensors[key] = ckpt.get(name, self.dtype).to(self.device)
        return self._tensors[key]

    def span_reader(self, name: str, labels: Iterable[str]) -> SpanReader | None:
        """Chunks read from the files as :meth:`_read` reads whole tensors (``store="mapped"`` only: held
        tensors are in memory already); None where a source is a LoRA adapter or missing."""
        if self.store != "mapped":
            return None
        ckpts = {label: self.base if label == BASE else self.experts[label] for label in labels}
        return file_spans(name, ckpts, self.device, self._read_dtype)

    @property
    def fresh_weights(self) -> bool:
        """``store="mapped"`` reads every weight anew (free to overwrite); ``store="memory"`` returns held tensors."""
        return self.store == "mapped"

    def weight(self, label: str, name: str) -> torch.Tensor:
        """The source's tensor (cached; do not mutate). LoRA experts: base + delta (a new tensor)."""
        if label != BASE and isinstance(self.experts.get(label), LoraAdapter):
            d = self._load(label, name)
            base = self.weight(BASE, name)
            return base if d is None else base.to(torch.float32) + d
        t = self._load(label, name)
        assert t is not None
        return t

    def delta(self, label: str, name: str, base_weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """A new float32 tensor the merge may overwrite (never the cached one)."""
        if isinstance(self.experts[label], LoraAdapter):
            d = self._load(label, name)
            return None if d is None else d.clone()
        base = base_weight if base_weight is not None else self.weight(BASE, name)
        # one new float32 tensor, the expert's weight, turned into the delta in place (a held weight is copied first)
        return self.weight(label, name).to(torch.float32, copy=not self.fresh_weights).sub_(base)

    def preload(self, labels: Iterable[str] | None = None) -> TensorCache:
        """Read every tensor of the named sources (default: all) now, with a progress bar.

        With ``store="mapped"`` only LoRA deltas are held; full checkpoints stay in their files.
        """
        self.check_fits()
        chosen = list(labels) if labels is not None else ([BASE] if self.base else []) + list(self.experts)
        jobs = [(label, name) for label in chosen for name in self.names()]
        if self.store == "mapped":
            jobs = [(label, name) for label, name in jobs if isinstance(self.experts.get(label), LoraAdapter)]
        for label, name in progress(jobs, desc="load merge sources", total=len(jobs), unit="tensor"):
            self._load(label, name)
        return self

    def check_config(self, config: MergeConfig) -> None:
        """The config must name the same experts (same paths) as the cache holds."""
        mine = self.paths()
        for label, path in config.experts.items():
            if label not in self.experts:
                raise ConfigError(f"expert {label!r} of the config is not in the cache (it holds {', '.join(self.experts)})")
            if Path(path).exists() and str(Path(path).resolve()) != mine[label]:
                raise ConfigError(f"expert {label!r} is {path} in the config but {mine[label]} in the cache: build a new cache")
        if config.base is not None and self.base is None:
            raise ConfigError("the config names a base but the cache has none: build the cache with base=PATH")


def plan_for(cache: TensorCache, config: MergeConfig) -> MergePlan:
    config.validate_all()
    cache.check_config(config)
    return build_plan(config, cache.num_layers)


def merged_state_dict(
    cache: TensorCache, config: MergeConfig, *, dtype: torch.dtype | None = None, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """The merged tensors as a new state dict (``dtype`` default: the reference checkpoint's dtype)."""
    plan = plan_for(cache, config)
    arch = cache.architecture
    out: dict[str, torch.Tensor] = {}
    for name in names if names is not None else cache.names():
        t = compute(plan.op_for(name, arch), name, cache)
        target = dtype or cache.reference.info(name).torch_dtype
        out[name] = t.to(target, copy=True)
    return out


@dataclass
class ApplyStats:
    """What :func:`apply_merge` did for one candidate."""

    copied: int
    skipped: int
    seconds: float
    plan: MergePlan


_applied: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, object]] = weakref.WeakKeyDictionary()


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    params: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    return params


@torch.no_grad()
def apply_merge(model: torch.nn.Module, cache: TensorCache, config: MergeConfig, *, force: bool = False) -> ApplyStats:
    """Write the merge of ``config`` into ``model``'s parameters in place.

    Only tensors whose plan operation differs from the one last applied to this model are
    touched (``force=True`` rewrites all, e.g. after the model was changed elsewhere).
    """
    start = time.perf_counter()
    plan = plan_for(cache, config)
    arch = cache.architecture
    params = _parameters(model)
    state = _applied.setdefault(model, {})
    if force or state.get("__cache__") is not cache:
        state.clear()
        state["__cache__"] = cache
    copied = skipped = 0
    for name in cache.names():
        op = plan.op_for(name, arch)
        if state.get(name) == op:
            skipped += 1
            continue
        target = params.get(name)
        if target is None:
            raise IncompatibleModelsError(
                f"the model has no parameter {name!r} of the merge sources: load the model from the same base"
            )
        if tuple(target.shape) != tuple(cache.reference.info(name).shape):
            raise IncompatibleModelsError(
                f"parameter {name!r} has shape {list(target.shape)} in the model, not as in the sources"
            )
        state.pop(name, None)  # written chunk by chunk: an interrupted write must not count as this op's
        compute_into(op, name, cache, target)
        state[name] = op
        copied += 1
    return ApplyStats(copied, skipped, time.perf_counter() - start, plan)
