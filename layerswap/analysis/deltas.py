"""Pass 1 of the analysis: per-tensor magnitudes and dot products, streamed, with a hook for the top-k sets.

Each base tensor is read once, and every expert's value for it (its delta, or the square root of
its Fisher importance) is computed while that base tensor is in memory. Per tensor and expert we
keep a handful of numbers (l2, mean/max |value|, non-finite count, number of counted non-zeros)
and the pairwise dot products (for cosines). The transformer-layer values are handed, while in
memory, to an observer: ``bands.BandStream`` counts them for the exact top-k% sets there, so that
one pass over the files does everything (see ``bands.py`` and ``overlap.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
import torch

from layerswap.analysis.workspace import Reductions, Workspace, worker_pool
from layerswap.io import DeltaView, ModelFolder, TensorInfo
from layerswap.io.reader import read_spans
from layerswap.progress import bar

#: Number of histogram bins: every value of the top 16 bits of a non-negative float32.
NBINS = 1 << 16
#: |values| below this (float32 denormals under 9.2e-41, histogram bin 0) count as unchanged.
SMALLEST_COUNTED = float(np.array([1 << 16], dtype=np.int32).view(np.float32)[0])


class ValueSource(Protocol):
    """One expert's per-parameter values: a delta against the base, or an importance."""

    name: str
    signed: bool  # False: values are non-negative (importance); sign agreement is undefined

    def folders(self) -> list[ModelFolder]:
        """Folders whose tensors are read whole (for sizing the workspace)."""

    def changes(self, tensor: str) -> bool:
        """False where the value is known to be zero without reading anything."""

    def needs_base(self, tensor: str) -> bool:
        """True where ``values`` needs the base weight (a full-model delta)."""

    def values(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace, key: str) -> torch.Tensor | None:
        """Flat float32 values of one tensor (in ``ws`` buffer ``key`` or fresh), or None for all zero."""

    def values_over(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace) -> torch.Tensor | None:
        """The values written over ``base_flat`` (the base's workspace buffer, which the caller no longer needs once
        this returns), or None where this source cannot (the caller then asks :meth:`values`)."""

    def sample(self, tensor: str, spans: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        """Float32 values at the flat index ranges ``spans`` (concatenated), or None where sampling is not offered.

        Only used to guess where the top-k% thresholds lie before the pass; the result never depends on it.
        """


class DeltaSource:
    """An expert's delta ``W_expert - W_base`` (full model or LoRA adapter, see :class:`DeltaView`).

    Full models are read straight into the workspace and the base subtracted in place; LoRA
    deltas come from ``DeltaView.delta`` (``B @ A * scaling``, never merged).
    """

    signed = True

    def __init__(self, view: DeltaView, name: str | None = None) -> None:
        self.view = view
        self.name = name or view.label

    def folders(self) -> list[ModelFolder]:
        return [] if self.view.is_lora else [self.view.expert]

    def changes(self, tensor: str) -> bool:
        return self.view.changes(tensor)

    def needs_base(self, tensor: str) -> bool:
        if not self.view.is_lora:
            return True
        return tensor in self.view.expert.replacements and tensor not in self.view.expert.modules

    def values(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace, key: str) -> torch.Tensor | None:
        if self.view.is_lora:
            shape = self.view.base.info(tensor).shape
            delta = self.view.delta(tensor, base_flat.view(shape) if base_flat is not None else None)
            return None if delta is None else delta.reshape(-1)
        if base_flat is None:
            base_flat = self.view.base.get(tensor, torch.float32).reshape(-1)
        return ws.read_minus(self.view.expert.info(tensor), base_flat, key)

    def values_over(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace) -> torch.Tensor | None:
        if self.view.is_lora or base_flat is None:
            return None
        return ws.read_minus_over(self.view.expert.info(tensor), base_flat)

    def sample(self, tensor: str, spans: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        if self.view.is_lora:
            return None
        return _sampled(self.view.expert.info(tensor), spans) - _sampled(self.view.base.info(tensor), spans)


class FisherSource:
    """Diagonal Fisher importance (a model folder, or tensors in memory); values are ``sqrt(F)``.

    Using ``sqrt(F)`` makes the squared values the Fisher mass, so the per-layer ``share`` of the
    deltas (fraction of squared update) becomes the fraction of Fisher mass with no special case,
    and the top-k% sets are the same as ranking by F.
    """

    signed = False

    def __init__(self, fisher: ModelFolder | Mapping[str, torch.Tensor], name: str) -> None:
        self.fisher = fisher
        self.name = name

    def folders(self) -> list[ModelFolder]:
        return [self.fisher] if isinstance(self.fisher, ModelFolder) else []

    def changes(self, tensor: str) -> bool:
        return tensor in self.fisher

    def needs_base(self, tensor: str) -> bool:
        return False

    def values(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace, key: str) -> torch.Tensor | None:
        if tensor not in self.fisher:
            return None
        if isinstance(self.fisher, ModelFolder):
            v = ws.read(self.fisher.info(tensor), key)
        else:
            f = self.fisher[tensor]
            v = ws.buf(key, f.numel()).copy_(f.reshape(-1))
        return v.clamp_min_(0).sqrt_()

    def values_over(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace) -> torch.Tensor | None:
        if base_flat is None or tensor not in self.fisher:
            return None
        if isinstance(self.fisher, ModelFolder):
            v = ws.read_into(self.fisher.info(tensor), base_flat)
        else:
            v = base_flat.copy_(self.fisher[tensor].reshape(-1))
        return v.clamp_min_(0).sqrt_()

    def sample(self, tensor: str, spans: Sequence[tuple[int, int]]) -> torch.Tensor | None:
        if tensor not in self.fisher:
            return None
        if isinstance(self.fisher, ModelFolder):
            f = _sampled(self.fisher.info(tensor), spans)
        else:
            flat = self.fisher[tensor].reshape(-1)
            f = torch.cat([flat[a:b] for a, b in spans]).float()
        return f.clamp_min(0).sqrt_()


def _sampled(info: TensorInfo, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Float32 values of a stored tensor at flat index ranges (only those bytes are read)."""
    return read_spans(info, spans)


@dataclass
class TensorStat:
    """Magnitudes of one expert's values on one tensor."""

    sumsq: float = 0.0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    nnz: int = 0
    nonfinite: int = 0


@dataclass
class Pass1:
    """Everything pass 1 measured; the tables are built from it."""

    experts: list[str]
    tensors: list[str]  # in reading order
    layer: dict[str, int | None]
    module: dict[str, str]
    numel: dict[str, int]
    base_sumsq: dict[str, float]  # NaN where the base tensor was not read (no expert changes it)
    stats: dict[tuple[str, str], TensorStat]  # (expert, tensor)
    dots: dict[tuple[str, str, str], float]  # (expert_a, expert_b, tensor)
    hist: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # expert -> int64[NBINS] of top-16 bits (only if a histogram pass ran)
    population: int = 0  # number of transformer-layer parameters
    signed: bool = True
    warnings: list[str] = field(default_factory=list)
    #: wall and CPU seconds of the phase outside the transformer layers and of the layer phase (for per-layer costs)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def layer_tensors(self) -> list[str]:
        return [t for t in self.tensors if self.layer[t] is not None]


def clean_nonfinite(v: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Replace NaN/Inf by 0 (in place) and count them; the cheap finite sum test comes first."""
    if math.isfinite(float(v.sum())):
        return v, 0
    bad = v.numel() - int(torch.count_nonzero(torch.isfinite(v)))
    if bad:
        torch.nan_to_num_(v, nan=0.0, posinf=0.0, neginf=0.0)
    return v, bad


def reading_order(base: ModelFolder, names: Sequence[str]) -> list[str]:
    """Base tensors sorted by file and offset, so each pass reads the files front to back."""
    return sorted(names, key=lambda n: (str(base.info(n).file), base.info(n).offset))


#: Called with (tensor, values, |values|, workspace) for every transformer-layer tensor, while they are in memory.
Observer = Callable[[str, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Workspace], None]


def run_pass1(
    base: ModelFolder, sources: Sequence[ValueSource], *, desc: str = "magnitudes", observer: Observer | None = None
) -> Pass1:
    """Stream every base tensor once and measure all sources on it (see module docstring).

    The tensors outside the transformer layers (embeddings, head: the largest) are visited first and
    their buffers released, so the layer phase (whose observer may keep top-k candidates) runs with
    small buffers. Tables list the tensors in file order regardless.
    """
    arch = base.architecture
    names = reading_order(base, base.names())
    experts = [s.name for s in sources]
    result = Pass1(
        experts=experts,
        tensors=names,
        layer={},
        module={},
        numel={},
        base_sumsq={},
        stats={},
        dots={},
        signed=all(s.signed for s in sources),
    )
    for name in names:
        role = arch.classify(name)
        result.layer[name], result.module[name], result.numel[name] = role.layer, role.module, base.info(name).numel
    result.population = sum(result.numel[t] for t in result.layer_tensors)
    outside = [t for t in names if result.layer[t] is None]
    layer_tensors = result.layer_tensors
    red = Reductions()
    clock = (time.perf_counter(), time.process_time())
    with red, bar(total=len(names), desc=desc, unit="tensor") as shown:
        ws = Workspace()
        with worker_pool(2, red) as halves:
            if red.emulate:  # one tensor at a time here: its two halves use both cores (same bits, see Reductions)
                ws.pool = red.pool = halves
            try:
                for name in outside:
                    _measure(base, sources, name, result, ws, red, observer)
                    shown.update(1)
            finally:
                ws.pool = red.pool = None
        # the embedding-sized buffers, already backed by pages, hold the layer phase's far smaller ones
        arena, least = ws.hand_over(), max((result.numel[t] for t in layer_tensors), default=0)
        ws = Workspace(arena, least)
        result.phases["outside_layers"], clock = _since(clock), (time.perf_counter(), time.process_time())
        if red.emulate and len(layer_tensors) > 1:
            # every op runs on one thread here, so two tensors at a time use both cores (results do not depend on it)
            lock = threading.Lock()
            local = threading.local()

            def locked(*args: object) -> None:
                with lock:
                    observer(*args)

            # an observer that says it is thread-safe (its per-tensor results go to their own keys) runs unserialised
            call = observer if getattr(getattr(observer, "__self__", observer), "thread_safe", False) else locked

            def work(name: str) -> None:
                if not hasattr(local, "ws"):
                    local.ws = Workspace(arena, least)
                _measure(base, sources, name, result, local.ws, red, call if observer is not None else None)

            with worker_pool(red.threads, red) as pool:
                for _ in pool.map(work, layer_tensors):
                    shown.update(1)
        else:
            for name in layer_tensors:
                _measure(base, sources, name, result, ws, red, observer)
                shown.update(1)
    result.phases["layers"] = _since(clock)
    for src in sources:
        bad = sum(result.stats[(src.name, t)].nonfinite for t in names)
        if bad:
            first = next(t for t in names if result.stats[(src.name, t)].nonfinite)
            result.warnings.append(
                f"{src.name} has {bad} NaN/Inf values (first in {first}): they are counted in the 'nonfinite' column and treated as 0"
            )
        if all(result.stats[(src.name, t)].sumsq == 0 for t in names):
            result.warnings.append(
                f"{src.name} is identical to the base: every value is zero, so its shares and overlaps are undefined"
            )
    return result


def _since(clock: tuple[float, float]) -> dict[str, float]:
    return {"wall": round(time.perf_counter() - clock[0], 2), "cpu": round(time.process_time() - clock[1], 2)}


def _abs_range(v: np.ndarray, out: np.ndarray, lo: int, hi: int) -> None:
    np.abs(v[lo:hi], out=out[lo:hi])


def _max_range(a: np.ndarray, lo: int, hi: int) -> np.float32:
    return a[lo:hi].max()


def _measure(
    base: ModelFolder,
    sources: Sequence[ValueSource],
    name: str,
    result: Pass1,
    ws: Workspace,
    red: Reductions,
    observer: Observer | None,
) -> None:
    """Pass 1 on one tensor: every source's values, their magnitudes and dot products (float32, whole-tensor reductions)."""
    numel = result.numel[name]
    in_layer = result.layer[name] is not None
    touched = [s for s in sources if s.changes(name)]
    base_flat = None
    if in_layer or touched:
        base_flat = ws.read(base.info(name), "base")
        result.base_sumsq[name] = red.dot(base_flat, base_flat)
    else:
        result.base_sumsq[name] = float("nan")
    values: dict[str, torch.Tensor] = {}
    slots: dict[str, int] = {}
    # outside the layers nothing keeps the base once the values are made: the last source writes its values over it
    # where it can (one embedding-sized buffer fewer), and every |value| is taken in place
    consumer = None if in_layer or not touched else touched[-1]
    for i, src in enumerate(sources):
        result.stats[(src.name, name)] = TensorStat()
        v = None
        if any(src is t for t in touched):
            needs = base_flat if src.needs_base(name) else None
            v = src.values_over(name, base_flat, ws) if src is consumer else None
            if v is None:
                v = src.values(name, needs, ws, f"value{i}")
        if v is not None:
            values[src.name], slots[src.name] = v, i
    del base_flat  # in the layers its buffer holds the first |values| from here on
    for e, v in values.items():
        stat = result.stats[(e, name)]
        stat.sumsq = red.dot(v, v)
        if not math.isfinite(stat.sumsq):  # NaN/Inf somewhere (or an overflow): count and zero them
            v, stat.nonfinite = clean_nonfinite(v)
            values[e] = v
            stat.sumsq = red.dot(v, v)
    experts = result.experts
    for i, ea in enumerate(experts):
        for eb in experts[i + 1 :]:
            both = ea in values and eb in values
            result.dots[(ea, eb, name)] = red.dot(values[ea], values[eb]) if both else 0.0
    absvals: dict[str, torch.Tensor] = {}
    first = next(iter(values), None)
    for e, v in values.items():
        stat = result.stats[(e, name)]
        # outside the layers the values are private and no longer needed: |values| replace them
        a = v if not in_layer else ws.buf("base" if e == first else f"abs{slots[e]}", numel)
        a_np = a.numpy()
        # elementwise and exact: numpy's one thread per half (torch's pool stalls on shared cores)
        ws.halves(numel, partial(_abs_range, v.numpy(), a_np))
        stat.sum_abs = red.sum(a)  # torch's reduction bits (see Reductions)
        stat.max_abs = float(max(ws.halves(numel, partial(_max_range, a_np)))) if numel else 0.0
        if in_layer:
            # counted non-zeros: |value| >= 9.2e-41 (float32 denormals below it count as unchanged)
            counted = ws.buf("counted", numel, torch.bool).numpy()
            stat.nnz = int(np.count_nonzero(np.greater_equal(a_np, np.float32(SMALLEST_COUNTED), out=counted)))
            absvals[e] = a
    if in_layer and observer is not None:
        observer(name, values, absvals, ws)
