"""An expert (full model or LoRA adapter) against its base: compatibility, and deltas in float32.

``DeltaView.delta`` is the one place that computes ``expert - base`` for every kind of expert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerswap.errors import IncompatibleModelsError
from layerswap.io.lora import LoraAdapter
from layerswap.io.model_folder import ModelFolder
from layerswap.io.reader import read_tensor

if TYPE_CHECKING:
    import torch

#: Either view of a checkpoint: both answer ``names()``, ``in`` and ``path``.
Checkpoint = ModelFolder | LoraAdapter


class DeltaView:
    """An expert (full model or LoRA adapter) seen as float32 deltas against its base.

    ``names()`` is the base's tensor names; ``delta(name)`` is None where the expert cannot differ
    from the base (a module a LoRA adapter does not touch), so callers can skip work.
    """

    def __init__(self, expert: Checkpoint, base: ModelFolder, *, label: str = "expert") -> None:
        self.expert = expert
        self.base = base
        self.label = label
        check_compatible(base, expert, label=label)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.expert, LoraAdapter)

    def names(self) -> list[str]:
        return self.base.names()

    def changes(self, name: str) -> bool:
        return not self.is_lora or name in self.expert

    def delta(self, name: str, base_weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """Float32 ``expert - base`` for one tensor; ``base_weight`` (float32) saves a read."""
        import torch

        if isinstance(self.expert, LoraAdapter):
            if name in self.expert.modules:
                return self.expert.lora_delta(name)
            if name in self.expert.replacements:
                w = read_tensor(self.expert.replacements[name], torch.float32)
                return w - (base_weight if base_weight is not None else self.base.get(name, torch.float32))
            return None
        w = self.expert.get(name, torch.float32)
        return w.sub_(base_weight if base_weight is not None else self.base.get(name, torch.float32))

    def weight(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The expert's full weight for one tensor (base + LoRA delta for adapters), float32 by default."""
        import torch

        dtype = dtype or torch.float32
        if isinstance(self.expert, LoraAdapter):
            if name in self.expert.replacements and name not in self.expert.modules:
                return read_tensor(self.expert.replacements[name], dtype)
            base_w = self.base.get(name, torch.float32)
            if name in self.expert.modules:
                base_w += self.expert.lora_delta(name)
            return base_w.to(dtype)
        return self.expert.get(name, dtype)


def check_compatible(base: ModelFolder, expert: Checkpoint, *, label: str = "expert") -> None:
    """Raise IncompatibleModelsError naming the first tensor where an expert departs from the base."""
    if isinstance(expert, LoraAdapter):
        expert.check_base(base)
        return
    if expert.num_layers != base.num_layers:
        raise IncompatibleModelsError(
            f"{label} {expert.path} has {expert.num_layers} layers, base {base.path} has {base.num_layers}: "
            "they must come from the same base model"
        )
    for name in base.names():
        if name not in expert:
            raise IncompatibleModelsError(
                f"{label} {expert.path} lacks tensor {name!r} of base {base.path}: they must come from the same base model"
            )
        a, b = base.info(name).shape, expert.info(name).shape
        if a != b:
            raise IncompatibleModelsError(
                f"tensor {name!r} has shape {list(b)} in {label} {expert.path} but {list(a)} in base {base.path}"
                + (" (different vocabulary sizes)" if ("embed" in name or "lm_head" in name) and a[1:] == b[1:] else "")
                + ": they must come from the same base model"
            )
    extra = [n for n in expert.names() if n not in base]
    if extra:
        raise IncompatibleModelsError(
            f"{label} {expert.path} has tensor {extra[0]!r} that base {base.path} lacks: they must come from the same base model"
        )
    base_cfg, expert_cfg = _decoder_config(base.config), _decoder_config(expert.config)
    for key in ARCHITECTURE_KEYS:
        a, b = base_cfg.get(key), expert_cfg.get(key)
        if a is not None and b is not None and a != b:
            raise IncompatibleModelsError(
                f"{label} {expert.path} says {key} {str(b)[:40]} in config.json, base {base.path} says {str(a)[:40]}: "
                "they must come from the same base model (if the config.json is wrong, fix it)"
            )


#: config.json facts that must agree between an expert and its base (tensor shapes can match without them).
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers")


def _decoder_config(config: dict) -> dict:
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config
