"""What a fine-tune holds in memory, checked before the model is loaded.

The floor of a run is its state: the base in float32 (the Trainer trains in float32, autocast or
not), a float32 gradient of every trained weight and the optimizer's moments (AdamW: two float32
per trained weight; Adafactor: a row and a column per matrix). Activations come on top, so a run
whose state alone does not fit is refused with one line that names the modes that would fit,
instead of being killed by the kernel after minutes of loading. Sharded runs (FSDP, DeepSpeed) and
several processes split or multiply this; the check covers one process on the CPU or one GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from layerswap.errors import ConfigError
from layerswap.finetune.config import FinetuneConfig
from layerswap.finetune.freezing import Partition
from layerswap.io import ModelFolder


@dataclass(frozen=True)
class TrainingState:
    """Bytes of a fine-tune's state: weights (float32), gradients and optimizer moments of what trains."""

    weights: int
    trained: int  # parameters that get a gradient (LoRA: the adapters, about 1% of the base)
    moments: int

    @property
    def total(self) -> int:
        return self.weights + 4 * self.trained + self.moments


def training_state(base: ModelFolder, partition: Partition, cfg: FinetuneConfig, *, optim: str | None = None) -> TrainingState:
    """The state a full fine-tune of ``partition`` (or a LoRA one) holds, from the base's tensor shapes."""
    arch = base.architecture
    optim = optim or cfg.optim
    infos = [base.info(name) for name in base.names()]
    weights = 4 * sum(info.numel for info in infos)
    roles = [arch.classify(info.name) for info in infos]
    trains = [info for info, role in zip(infos, roles, strict=True) if partition.trains(role.layer, role.module)]
    if cfg.method == "lora":  # r x (in + out) per wrapped matrix: an upper bound that wraps every trained matrix
        in_layers = {info.name for info, role in zip(infos, roles, strict=True) if role.layer is not None}
        trained = sum(cfg.lora_r * sum(info.shape) for info in trains if len(info.shape) == 2 and info.name in in_layers)
        return TrainingState(weights, trained, 8 * trained)
    trained = sum(info.numel for info in trains)
    if optim == "adafactor":  # a row and a column of second moments per matrix, the whole vector otherwise
        moments = 4 * sum(sum(info.shape) if len(info.shape) == 2 else info.numel for info in trains)
    else:
        moments = 8 * trained
    return TrainingState(weights, trained, moments)


def check_fits(base: ModelFolder, partition: Partition, cfg: FinetuneConfig, *, available: int | None = None) -> None:
    """Refuse, before loading, a fine-tune whose state alone exceeds the memory of the device it trains on."""
    if _sharded_or_several():
        return
    if available is None:
        available = _available()
        if available is None:
            return
    state = training_state(base, partition, cfg)
    if state.total <= available:
        return
    options = []
    if cfg.method == "full" and cfg.optim == "adamw":
        options.append(("--optim adafactor", training_state(base, partition, cfg, optim="adafactor").total))
    if cfg.method == "full":
        options.append(("--method lora", training_state(base, partition, cfg.model_copy(update={"method": "lora"})).total))
    fitting = [f"{flag} ({need / 1e9:.1f} GB)" for flag, need in options if need <= available]
    hint = (
        f"use {' or '.join(fitting)}, or train fewer layers (--train-layers)"
        if fitting
        else "use a machine or GPU with more memory"
    )
    what = f"{cfg.method} fine-tuning" + (f" with {cfg.optim}" if cfg.method == "full" else "")
    raise ConfigError(
        f"{what} of {base.path.name} needs at least {state.total / 1e9:.1f} GB for its weights, gradients and optimizer state "
        f"(before activations) but {available / 1e9:.1f} GB is available: {hint}"
    )


def _sharded_or_several() -> bool:
    """Under FSDP or DeepSpeed (state split) or several processes (one state each): the check stands aside."""
    sharded = any(os.environ.get(v, "").lower() in ("1", "true") for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))
    return sharded or int(os.environ.get("WORLD_SIZE") or 1) > 1


def _available() -> int | None:
    import torch

    from layerswap.finetune.workdir import has_accelerator

    if has_accelerator():
        if not torch.cuda.is_available():
            return None  # another accelerator: its memory is not asked here
        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available
