"""Pass 1 of the analysis: per-tensor magnitudes, dot products and |value| histograms, streamed.

Each base tensor is read once, and every expert's value for it (its delta, or the square root of
its Fisher importance) is computed while that base tensor is in memory. Per tensor and expert we
keep a handful of numbers (l2, mean/max |value|, non-finite count), the pairwise dot products
(for cosines), and a 65,536-bin histogram of the top 16 bits of |value| over all transformer-layer
parameters. Those bits order non-negative float32 numbers exactly, so pass 2 (``overlap.py``) can
find the exact global top-k% threshold by looking only inside one bin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from layerswap.io import DeltaView, ModelFolder, TensorInfo, module_sort_key, read_tensor_into
from layerswap.progress import progress

#: Number of histogram bins: every value of the top 16 bits of a non-negative float32.
NBINS = 1 << 16


class Workspace:
    """Flat buffers reused for every tensor of a pass (allocated once, sized to the largest tensor).

    Fresh multi-hundred-MB tensors cost more in page faults than the arithmetic on them, so the
    passes read and compute into these buffers instead.
    """

    def __init__(self, numel: int, nbytes: int) -> None:
        self.numel = numel
        self.scratch = bytearray(nbytes)
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def buf(self, key: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The first ``n`` elements of buffer ``key`` (flat)."""
        tensor = self._bufs.get((key, dtype))
        if tensor is None:
            tensor = self._bufs[(key, dtype)] = torch.empty(self.numel, dtype=dtype)
        return tensor[:n]

    def read(self, info: TensorInfo, key: str) -> torch.Tensor:
        """Read a tensor as flat float32 into buffer ``key``."""
        return read_tensor_into(info, self.buf(key, self.numel), self.scratch).reshape(-1)

    @classmethod
    def for_tensors(cls, folders: Sequence[ModelFolder], names: Sequence[str]) -> Workspace:
        numel = max((folders[0].info(n).numel for n in names), default=0)
        nbytes = max((f.info(n).nbytes for f in folders for n in names if n in f), default=0)
        return cls(numel, nbytes)


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
        v = ws.read(self.view.expert.info(tensor), key)
        return v.sub_(base_flat) if base_flat is not None else v.sub_(self.view.base.get(tensor, torch.float32).reshape(-1))


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
    hist: dict[str, np.ndarray]  # expert -> int64[NBINS] over transformer-layer parameters
    population: int = 0  # number of transformer-layer parameters
    signed: bool = True
    warnings: list[str] = field(default_factory=list)

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


def run_pass1(base: ModelFolder, sources: Sequence[ValueSource], *, desc: str = "magnitudes") -> Pass1:
    """Stream every base tensor once and measure all sources on it (see module docstring)."""
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
        hist={e: np.zeros(NBINS, dtype=np.int64) for e in experts},
        signed=all(s.signed for s in sources),
    )
    ws = Workspace.for_tensors([base] + [f for s in sources for f in s.folders()], names)
    for name in progress(names, desc=desc, unit="tensor"):
        role = arch.classify(name)
        numel = base.info(name).numel
        result.layer[name], result.module[name], result.numel[name] = role.layer, role.module, numel
        in_layer = role.layer is not None
        if in_layer:
            result.population += numel
        touched = [s for s in sources if s.changes(name)]
        base_flat = None
        if in_layer or touched:
            base_flat = ws.read(base.info(name), "base")
            result.base_sumsq[name] = float(torch.dot(base_flat, base_flat))
        else:
            result.base_sumsq[name] = float("nan")
        values: dict[str, torch.Tensor] = {}
        for i, src in enumerate(sources):
            stat = result.stats[(src.name, name)] = TensorStat()
            v = src.values(name, base_flat if src.needs_base(name) else None, ws, f"value{i}") if any(src is t for t in touched) else None
            if v is None:
                if in_layer:
                    result.hist[src.name][0] += numel
                continue
            stat.sumsq = float(torch.dot(v, v))
            if not math.isfinite(stat.sumsq):  # NaN/Inf somewhere (or an overflow): count and zero them
                v, stat.nonfinite = clean_nonfinite(v)
                stat.sumsq = float(torch.dot(v, v))
            a = torch.abs(v, out=ws.buf("abs", numel))
            stat.sum_abs = float(a.sum())
            stat.max_abs = float(a.max()) if numel else 0.0
            if in_layer:
                bins = torch.bitwise_right_shift(a.view(torch.int32), 16, out=ws.buf("bins", numel, torch.int32))
                counts = torch.bincount(bins, minlength=NBINS).numpy()
                result.hist[src.name] += counts
                # bin 0 holds 0 and float32 denormals below 9.2e-41, which count as unchanged
                stat.nnz = numel - int(counts[0])
            elif stat.sumsq > 0:
                stat.nnz = int(torch.count_nonzero(a))
            values[src.name] = v
        for i, ea in enumerate(experts):
            for eb in experts[i + 1 :]:
                both = ea in values and eb in values
                result.dots[(ea, eb, name)] = float(torch.dot(values[ea], values[eb])) if both else 0.0
        del values, base_flat
    for src in sources:
        bad = sum(result.stats[(src.name, t)].nonfinite for t in names)
        if bad:
            first = next(t for t in names if result.stats[(src.name, t)].nonfinite)
            result.warnings.append(
                f"{src.name} has {bad} NaN/Inf values (first in {first}): they are counted in the 'nonfinite' column and treated as 0"
            )
        if all(result.stats[(src.name, t)].sumsq == 0 for t in names):
            result.warnings.append(f"{src.name} is identical to the base: every value is zero, so its shares and overlaps are undefined")
    return result


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

DELTA_COLUMNS = ["expert", "tensor", "layer", "module", "numel", "l2", "rel_l2", "rms", "mean_abs", "max_abs", "base_l2", "nonfinite"]


def _ratio(num: float, den: float) -> float:
    """num/den, NaN instead of a division by zero (an all-zero base tensor or expert)."""
    return num / den if den > 0 else float("nan")


def deltas_table(p1: Pass1) -> pd.DataFrame:
    """One row per expert and tensor (``rel_l2 = ||value|| / ||W_base||``)."""
    rows = []
    for e in p1.experts:
        for t in p1.tensors:
            s = p1.stats[(e, t)]
            n = p1.numel[t]
            l2 = math.sqrt(max(s.sumsq, 0.0))
            base_l2 = math.sqrt(p1.base_sumsq[t]) if not math.isnan(p1.base_sumsq[t]) else float("nan")
            rows.append(
                {
                    "expert": e,
                    "tensor": t,
                    "layer": p1.layer[t],
                    "module": p1.module[t],
                    "numel": n,
                    "l2": l2,
                    "rel_l2": 0.0 if l2 == 0 else _ratio(l2, base_l2),
                    "rms": _ratio(l2, math.sqrt(n)),
                    "mean_abs": _ratio(s.sum_abs, n),
                    "max_abs": s.max_abs,
                    "base_l2": base_l2,
                    "nonfinite": s.nonfinite,
                }
            )
    out = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    out["layer"] = out["layer"].astype("Int64")
    return out


def cell_sumsq(p1: Pass1) -> pd.DataFrame:
    """Squared magnitude per expert x layer x module (transformer layers only): ``expert, layer, module, sumsq, base_sumsq, numel``."""
    rows = [
        {"expert": e, "layer": p1.layer[t], "module": p1.module[t], "sumsq": p1.stats[(e, t)].sumsq, "base_sumsq": p1.base_sumsq[t], "numel": p1.numel[t]}
        for e in p1.experts
        for t in p1.layer_tensors
    ]
    df = pd.DataFrame(rows, columns=["expert", "layer", "module", "sumsq", "base_sumsq", "numel"])
    return df.groupby(["expert", "layer", "module"], sort=False).sum().reset_index()


def layers_table(p1: Pass1) -> pd.DataFrame:
    """Per expert and layer: ``l2, rel_l2, share`` (share of the expert's squared update over all layers)."""
    cells = cell_sumsq(p1)
    by_layer = cells.groupby(["expert", "layer"], sort=False)[["sumsq", "base_sumsq", "numel"]].sum().reset_index()
    totals = by_layer.groupby("expert")["sumsq"].transform("sum")
    by_layer["l2"] = np.sqrt(by_layer["sumsq"].clip(lower=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        by_layer["rel_l2"] = np.where(by_layer["base_sumsq"] > 0, by_layer["l2"] / np.sqrt(by_layer["base_sumsq"]), np.nan)
        by_layer["share"] = np.where(totals > 0, by_layer["sumsq"] / totals.where(totals > 0, 1), np.nan)
    by_layer["layer"] = by_layer["layer"].astype(int)
    return by_layer[["expert", "layer", "numel", "l2", "rel_l2", "share"]].sort_values(["expert", "layer"], kind="stable").reset_index(drop=True)


def cosine_table(p1: Pass1) -> pd.DataFrame:
    """Cosine between two experts' values per layer x module, per layer (module 'all') and in total."""
    rows = []
    experts = p1.experts
    for i, a in enumerate(experts):
        for b in experts[i + 1 :]:
            for t in p1.layer_tensors:
                rows.append({"expert_a": a, "expert_b": b, "layer": p1.layer[t], "module": p1.module[t], "dot": p1.dots[(a, b, t)], "sq_a": p1.stats[(a, t)].sumsq, "sq_b": p1.stats[(b, t)].sumsq})
    cols = ["expert_a", "expert_b", "layer", "module", "cosine"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    sums = ["dot", "sq_a", "sq_b"]
    keys = ["expert_a", "expert_b"]
    cell = df.groupby(keys + ["layer", "module"], sort=False)[sums].sum().reset_index()
    layer = df.groupby(keys + ["layer"], sort=False)[sums].sum().reset_index().assign(module="all")
    total = df.groupby(keys, sort=False)[sums].sum().reset_index().assign(layer=pd.NA, module="all")
    out = pd.concat([cell, layer, total], ignore_index=True)
    den = np.sqrt(out["sq_a"].clip(lower=0) * out["sq_b"].clip(lower=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["cosine"] = np.where(den > 0, out["dot"] / den.where(den > 0, 1), np.nan)
    out["layer"] = out["layer"].astype("Int64")
    out = out.sort_values(["expert_a", "expert_b", "layer", "module"], key=_order_key, na_position="last", kind="stable")
    return out[cols].reset_index(drop=True)


def _order_key(col: pd.Series) -> pd.Series:
    """Sort modules in display order ('all' last); other columns as they are."""
    if col.name == "module":
        return col.map(lambda m: (1, m) if m == "all" else (0, *module_sort_key(m)))
    return col
