"""PEFT LoRA adapter folders, read as the base tensors they change (``B @ A * scaling``)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from layerswap.errors import CheckpointError, IncompatibleModelsError, InputPathError
from layerswap.io.reader import TensorInfo, load_json, read_safetensors_header, read_tensor

if TYPE_CHECKING:
    import torch

    from layerswap.io.model_folder import ModelFolder

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?(?:\.weight)?$"
)


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: the base tensor it changes and its two factors."""

    target: str  # base tensor name, e.g. model.layers.0.self_attn.q_proj.weight
    a: TensorInfo
    b: TensorInfo
    scaling: float
    embedding: bool
    fan_in_fan_out: bool

    @property
    def rank(self) -> int:
        return self.b.shape[1] if self.embedding else self.a.shape[0]


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module path suffix (or regex)."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter folder seen as per-module deltas, computed on demand in float32.

    ``lora_delta(name) = B @ A * scaling`` with ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with
    rsLoRA); ``modules_to_save`` are full replacement tensors, whose delta needs the base: ask a
    :class:`~layerswap.io.deltas.DeltaView` for any tensor's delta.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputPathError(f"{self.path} is not a folder: pass a PEFT adapter folder")
        self.config: dict[str, Any] = load_json(self.path / "adapter_config.json", "a PEFT adapter needs adapter_config.json")
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(f"{self.path} is a {peft_type} adapter: layerswap reads LoRA adapters only")
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.path} is a DoRA adapter: its delta is not B @ A; merge it into a full model first")
        weights = self.path / "adapter_model.safetensors"
        if not weights.exists():
            if any((self.path / n).exists() for n in ("adapter_model.bin", "adapter_model.pt")):
                raise CheckpointError(
                    f"{self.path} holds a pickled adapter_model.bin, which layerswap never unpickles: re-save it with "
                    "save_pretrained(..., safe_serialization=True) where you trust the file"
                )
            raise InputPathError(f"{self.path} has no adapter_model.safetensors: pass a complete PEFT adapter folder")
        self._raw, _ = read_safetensors_header(weights)
        self.r = int(self.config.get("r", 8))
        self.alpha = float(self.config.get("lora_alpha", self.r))
        self.use_rslora = bool(self.config.get("use_rslora", False))
        self.base_model_name_or_path: str | None = self.config.get("base_model_name_or_path")
        self.modules: dict[str, LoraModule] = {}
        self.replacements: dict[str, TensorInfo] = {}
        factors: dict[str, dict[str, TensorInfo]] = {}
        for key, info in self._raw.items():
            m = _LORA_KEY.match(key)
            if m:
                factors.setdefault(m.group("module"), {})[m.group("kind")] = info
            elif "lora_magnitude_vector" in key:
                raise CheckpointError(f"{self.path} holds DoRA magnitudes ({key}): merge it into a full model first")
            else:
                name = key.removeprefix("base_model.model.")
                name = name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")
                self.replacements[name] = info
        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        for module, parts in factors.items():
            embedding = "lora_embedding_A" in parts
            a = parts.get("lora_embedding_A" if embedding else "lora_A")
            b = parts.get("lora_embedding_B" if embedding else "lora_B")
            if a is None or b is None:
                raise CheckpointError(f"{self.path} has an incomplete LoRA pair for {module}: re-save the adapter")
            r = b.shape[1] if embedding else a.shape[0]
            r = int(_pattern_value(rank_pattern, module, r))
            alpha = float(_pattern_value(alpha_pattern, module, self.alpha))
            scaling = alpha / math.sqrt(r) if self.use_rslora else alpha / r
            target = f"{module}.weight"
            self.modules[target] = LoraModule(
                target, a, b, scaling, embedding, bool(self.config.get("fan_in_fan_out", False))
            )
        if not self.modules and not self.replacements:
            raise CheckpointError(f"{self.path} has no LoRA weights: the adapter is empty")

    @property
    def target_modules(self) -> set[str]:
        """Module kinds adapted (``q_proj``, ...), as found in the weights."""
        return {t.split(".")[-2] for t in self.modules}

    def names(self) -> list[str]:
        """Base tensor names that this adapter changes."""
        return list(self.modules) + [n for n in self.replacements if n not in self.modules]

    def __contains__(self, name: object) -> bool:
        return name in self.modules or name in self.replacements

    def raw_names(self) -> list[str]:
        return list(self._raw)

    def raw_info(self, key: str) -> TensorInfo:
        return self._raw[key]

    def lora_delta(self, name: str) -> torch.Tensor:
        """``B @ A * scaling`` in float32 for an adapted module (shape of the base weight)."""
        import torch

        mod = self.modules[name]
        a = read_tensor(mod.a, torch.float32)
        b = read_tensor(mod.b, torch.float32)
        if mod.embedding:
            delta = (b @ a).T  # PEFT: Embedding delta = (B @ A)^T; A is (r, vocab), B is (dim, r)
        else:
            delta = b @ a
            if mod.fan_in_fan_out:
                delta = delta.T
        return delta.mul_(mod.scaling)

    def check_base(self, base: ModelFolder) -> None:
        """Every adapted module must exist in the base with matching shapes."""
        for name, mod in self.modules.items():
            if name not in base:
                raise IncompatibleModelsError(
                    f"adapter {self.path} changes {name!r}, which base {base.path} lacks: the adapter was made for another base"
                )
            shape = base.info(name).shape
            out_f, in_f = (mod.a.shape[1], mod.b.shape[0]) if mod.embedding else (mod.b.shape[0], mod.a.shape[1])
            expected = (out_f, in_f)
            if mod.fan_in_fan_out and not mod.embedding:
                expected = (in_f, out_f)
            if tuple(shape) != expected:
                raise IncompatibleModelsError(
                    f"adapter {self.path} module {name!r} has shape {list(expected)} but the base has {list(shape)}: "
                    "the adapter was made for another base"
                )
        for name, info in self.replacements.items():
            if name not in base or base.info(name).shape != info.shape:
                raise IncompatibleModelsError(
                    f"adapter {self.path} replaces {name!r} with shape {list(info.shape)}, which does not match base "
                    f"{base.path}: the adapter was made for another base"
                )

    def __repr__(self) -> str:
        return f"LoraAdapter({str(self.path)!r}, {len(self.modules)} modules, r={self.r})"


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether a folder is a PEFT adapter (it holds ``adapter_config.json``)."""
    return (Path(path) / "adapter_config.json").exists()
