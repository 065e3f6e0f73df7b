"""PEFT LoRA adapter folders, read as the base tensors they change (``B @ A * scaling``)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from layerswap.errors import CheckpointError, IncompatibleModelsError, InputPathError
from layerswap.io.dtypes import FLOAT_CODES
from layerswap.io.reader import TensorInfo, load_json, read_safetensors_header, read_tensor, refuse_special_files

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
        if re.fullmatch(rf"(.*\.)?(?:{key})", module):
            return value
    return default


def _number(value: Any, *, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return not integer or isinstance(value, int) or float(value).is_integer()


def _read_lora_config(config: dict[str, Any], path: Path) -> tuple[int, float, bool, dict[str, int], dict[str, float]]:
    """r, lora_alpha, use_rslora, rank_pattern and alpha_pattern of an adapter_config.json, each checked."""
    where = f"{path}/adapter_config.json"
    fix = "fix it or re-save the adapter with PEFT"
    r = config.get("r", 8)
    if not _number(r, integer=True) or r <= 0:
        shown = f" {r}" if _number(r, integer=False) else ""
        raise CheckpointError(f"{where}: r must be a positive integer (got {type(r).__name__}{shown}): {fix}")
    alpha = config.get("lora_alpha", r)
    if not _number(alpha, integer=False):
        raise CheckpointError(f"{where}: lora_alpha must be a finite number (got {type(alpha).__name__}): {fix}")
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise CheckpointError(f"{where}: use_rslora must be true or false: {fix}")
    patterns = []
    for field, integer in (("rank_pattern", True), ("alpha_pattern", False)):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict):
            raise CheckpointError(f"{where}: {field} must map module patterns to numbers: {fix}")
        for key, value in pattern.items():
            if len(key) > 500:
                raise CheckpointError(f"{where}: a {field} key is {len(key)} characters long: {fix}")
            try:
                re.compile(key)
            except re.error as exc:
                raise CheckpointError(f"{where}: {field} key {key[:40]!r} is not a valid regular expression ({exc.msg}): {fix}") from None
            if not _number(value, integer=integer) or (integer and value <= 0):
                kind = "a positive integer" if integer else "a finite number"
                raise CheckpointError(f"{where}: {field}[{key[:40]!r}] must be {kind}: {fix}")
        patterns.append({k: (int(v) if integer else float(v)) for k, v in pattern.items()})
    return int(r), float(alpha), rslora, patterns[0], patterns[1]


def _check_factors(a: TensorInfo, b: TensorInfo, module: str, path: Path) -> int:
    """LoRA factors: floating point, 2-D, of one positive rank (A is r x in, B is out x r); the rank."""
    fix = "re-save the adapter with PEFT"
    for t in (a, b):
        if t.dtype not in FLOAT_CODES:
            raise CheckpointError(f"{path}: LoRA tensor {t.name[:80]!r} is {t.dtype}, not floating point: {fix}")
        if len(t.shape) != 2:
            raise CheckpointError(f"{path}: LoRA tensor {t.name[:80]!r} has shape {list(t.shape)}, not 2-D: {fix}")
    r = a.shape[0]
    if r <= 0 or b.shape[1] != r:
        raise CheckpointError(
            f"{path}: LoRA tensors of {module[:80]} have shapes {list(a.shape)} (A) and {list(b.shape)} (B), "
            f"which do not share a positive rank: {fix}"
        )
    return r


class LoraAdapter:
    """A PEFT LoRA adapter folder seen as per-module deltas, computed on demand in float32.

    ``lora_delta(name) = B @ A * scaling`` with ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with
    rsLoRA); ``modules_to_save`` are full replacement tensors, whose delta needs the base: ask a
    :class:`~layerswap.io.deltas.DeltaView` for any tensor's delta.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config: dict[str, Any] = _adapter_config(self.path)
        peft_type = str(self.config.get("peft_type", "LORA")).upper()[:40]
        if peft_type != "LORA":
            raise CheckpointError(f"{self.path} is a {peft_type} adapter: layerswap reads LoRA adapters only")
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.path} is a DoRA adapter: its delta is not B @ A; merge it into a full model first")
        self._raw, _ = read_safetensors_header(_adapter_weights(self.path))
        self.r, self.alpha, self.use_rslora, rank_pattern, alpha_pattern = _read_lora_config(self.config, self.path)
        base_name = self.config.get("base_model_name_or_path")
        self.base_model_name_or_path: str | None = base_name if isinstance(base_name, str) else None
        self.modules: dict[str, LoraModule] = {}
        self.replacements: dict[str, TensorInfo] = {}
        factors: dict[str, dict[str, TensorInfo]] = {}
        for key, info in self._raw.items():
            m = _LORA_KEY.match(key)
            if m and not key.endswith(".bias"):
                factors.setdefault(m.group("module"), {})[m.group("kind")] = info
            elif m or "lora_magnitude_vector" in key:
                raise CheckpointError(
                    f"{self.path} holds {'DoRA magnitudes' if m is None else 'LoRA biases'} ({key[:80]}): merge it into a full model first"
                )
            else:
                name = key.removeprefix("base_model.model.")
                name = name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")
                self.replacements[name] = info
        fan_in_fan_out = self.config.get("fan_in_fan_out", False)
        if not isinstance(fan_in_fan_out, bool):
            raise CheckpointError(f"{self.path}/adapter_config.json: fan_in_fan_out must be true or false: fix or re-save the adapter")
        for module, parts in factors.items():
            embedding = "lora_embedding_A" in parts
            a = parts.get("lora_embedding_A" if embedding else "lora_A")
            b = parts.get("lora_embedding_B" if embedding else "lora_B")
            if a is None or b is None:
                raise CheckpointError(f"{self.path} has an incomplete LoRA pair for {module}: re-save the adapter")
            r = _check_factors(a, b, module, self.path)
            expected = _pattern_value(rank_pattern, module, r if rank_pattern or "r" not in self.config else self.r)
            if expected != r:
                raise CheckpointError(
                    f"{self.path} module {module} has rank-{r} LoRA tensors but adapter_config.json gives it r={expected}: "
                    "fix r/rank_pattern or re-save the adapter"
                )
            alpha = float(_pattern_value(alpha_pattern, module, self.alpha))
            scaling = alpha / math.sqrt(r) if self.use_rslora else alpha / r
            target = f"{module}.weight"
            self.modules[target] = LoraModule(target, a, b, scaling, embedding, fan_in_fan_out)
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


def _adapter_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise InputPathError(f"{path} is not a folder: pass a PEFT adapter folder")
    refuse_special_files(path, fix="pass a complete PEFT adapter folder")
    return load_json(path / "adapter_config.json", "a PEFT adapter needs adapter_config.json")


def _adapter_weights(path: Path) -> Path:
    """The adapter's safetensors weights; a pickle-only adapter is refused."""
    weights = path / "adapter_model.safetensors"
    if not os.path.lexists(weights):
        if any((path / n).exists() for n in ("adapter_model.bin", "adapter_model.pt")):
            raise CheckpointError(
                f"{path} holds a pickled adapter_model.bin, which layerswap never unpickles: re-save it with "
                "save_pretrained(..., safe_serialization=True) where you trust the file"
            )
        raise InputPathError(f"{path} has no adapter_model.safetensors: pass a complete PEFT adapter folder")
    return weights


def open_adapter_for_peft(path: str | os.PathLike[str]) -> tuple[LoraAdapter | None, dict[str, Any]]:
    """For a loader that hands an adapter to PEFT (evaluate): a plain LoRA adapter fully validated (a
    :class:`LoraAdapter`); other PEFT types and DoRA, which PEFT merges itself, checked as far as
    layerswap can (regular files, safetensors weights with a valid header; a pickle-only one refused)."""
    path = Path(path)
    config = _adapter_config(path)
    if str(config.get("peft_type", "LORA")).upper() == "LORA" and not config.get("use_dora"):
        adapter = LoraAdapter(path)
        return adapter, adapter.config
    read_safetensors_header(_adapter_weights(path))
    return None, config


def adapter_base(adapter: str | os.PathLike[str], config: dict[str, Any], *, strict: bool = True) -> str | None:
    """The base model an adapter names (``base_model_name_or_path``), a relative path taken from the adapter folder.

    A relative name can only mean relative to where the adapter was made; the working directory of a
    later run is unrelated, so it is never used. A relative path that is not there beside the adapter is
    an error (``strict``) or None; absolute paths and the embedded short names are kept as they are."""
    from layerswap.io.embedded import EMBEDDED

    named = config.get("base_model_name_or_path")
    if not isinstance(named, str) or not named:
        return None
    if os.path.isabs(os.path.expanduser(named)) or named in EMBEDDED:
        return named
    beside = Path(adapter) / named
    if beside.exists():
        return str(beside)
    if strict:
        raise InputPathError(
            f"adapter {adapter} names its base {named!r}, a relative path that is not beside the adapter ({beside}): "
            "pass --base with the base model folder"
        )
    return None


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """Whether a folder is a PEFT adapter (it holds ``adapter_config.json``)."""
    return (Path(path) / "adapter_config.json").exists()
