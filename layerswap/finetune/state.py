"""A checkpoint's optimizer, scheduler, scaler and RNG state in safetensors and JSON: resuming unpickles nothing.

The Hugging Face ``Trainer`` saves this state with ``torch.save`` (``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``) and resumes it with ``torch.load``; even with ``weights_only=True`` that runs the
unpickler on a file anyone who can write the work folder could have replaced. layerswap's Trainer
(:mod:`layerswap.finetune.trainer`) saves and loads it here instead: tensors (Adam's moments and step
counts, torch's RNG states) as safetensors, everything else (parameter groups, the scheduler, the
Python and NumPy RNG states) as JSON. Values round-trip exactly (floats in JSON as Python's ``repr``),
so a resumed run matches an uninterrupted one. Sharded optimizers (FSDP, DeepSpeed) keep their own formats.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerswap.io import write_text_atomic
from layerswap.io.stored import read_stored_bytes, read_stored_json

OPTIMIZER = "optimizer"
SCHEDULER = "scheduler.json"
SCALER = "scaler.json"
#: Files every checkpoint written by layerswap's Trainer holds (RNG state: per process, see :func:`rng_stem`).
STATE_FILES = (f"{OPTIMIZER}.safetensors", f"{OPTIMIZER}.json", SCHEDULER)
_FIX = "start over with --overwrite (or delete the checkpoint to resume from an earlier one)"


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as safetensors through a temporary sibling renamed at the end (never torn).

    ``save_file`` writes each tensor from its own memory; ``save`` would build the whole file in memory,
    twice (Adam's two moments of every trained parameter: 0.8 GB of bytes, twice, for Gemma 3 270M).
    """
    from safetensors.torch import save_file

    from layerswap.io.outputs import write_error

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)  # O_EXCL, unpredictable
    try:
        os.close(fd)
        save_file({k: t.detach().to("cpu").contiguous() for k, t in tensors.items()}, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        mapped = write_error(path, exc) if isinstance(exc, OSError) else None
        if mapped is not None:
            raise mapped from exc
        raise


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(read_stored_bytes(path, root=path.parent, fix=_FIX))
    except SafetensorError as exc:
        from layerswap.errors import CheckpointError

        raise CheckpointError(f"stored state {path} is not a valid safetensors file ({exc}): {_FIX}") from None


def _save_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, allow_nan=True))


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """``optimizer.safetensors`` (every tensor of every parameter's state) and ``optimizer.json`` (the rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    _save_tensors(folder / f"{OPTIMIZER}.safetensors", tensors)
    _save_json(folder / f"{OPTIMIZER}.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore what :func:`save_optimizer` wrote; tuples in the live parameter groups (Adam's betas) stay tuples."""
    meta = read_stored_json(folder / f"{OPTIMIZER}.json", root=folder, fix=_FIX)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in _load_tensors(folder / f"{OPTIMIZER}.safetensors").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    live = optimizer.param_groups
    groups = meta["param_groups"]
    for saved, current in zip(groups, live, strict=False):
        for key, value in saved.items():
            if isinstance(current.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_json_state(obj: Any, path: Path) -> None:
    """A scheduler's or gradient scaler's ``state_dict`` (plain numbers and lists) as JSON."""
    _save_json(path, obj.state_dict())


def load_json_state(obj: Any, path: Path) -> None:
    obj.load_state_dict(read_stored_json(path, root=path.parent, fix=_FIX))


def rng_stem(process_index: int, world_size: int) -> str:
    return "rng_state" if world_size <= 1 else f"rng_state_{process_index}"


def save_rng(folder: Path, stem: str, *, distributed: bool) -> None:
    """Python's, NumPy's and torch's RNG states (CUDA's too where present)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        states = torch.cuda.random.get_rng_state_all() if distributed else [torch.cuda.random.get_rng_state()]
        tensors.update({f"cuda.{i}": s for i, s in enumerate(states)})
    _save_tensors(folder / f"{stem}.safetensors", tensors)
    _save_json(
        folder / f"{stem}.json",
        {
            "python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "distributed": distributed,
        },
    )


def load_rng(folder: Path, stem: str) -> bool:
    """Restore what :func:`save_rng` wrote; False (nothing restored) when the checkpoint has none."""
    if not (folder / f"{stem}.json").exists():
        return False
    meta = read_stored_json(folder / f"{stem}.json", root=folder, fix=_FIX)
    tensors = _load_tensors(folder / f"{stem}.safetensors")
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        if meta.get("distributed"):
            torch.cuda.random.set_rng_state_all(cuda)
        else:
            torch.cuda.random.set_rng_state(cuda[0])
    return True
