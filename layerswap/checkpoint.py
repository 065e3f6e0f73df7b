"""Lazy named-tensor access to checkpoints, and an atomic sharded writer.

Why not ``safe_open`` or ``from_pretrained``: every question the toolkit asks is about one tensor
at a time (its delta, its norm, its bytes), and the checkpoints of real users are 16 GB and more.
So headers are parsed once (no tensor data read), a tensor is read with one ``pread`` of its byte
range (no memory map whose pages would pile up in resident memory), and a layer swap can copy a
tensor's raw bytes from source file to output file without decoding them.

Three views share one interface (``names``, ``info``, ``get``):

- :class:`ModelFolder`: a Hugging Face model folder, single or sharded safetensors with index.
- :class:`LoraAdapter`: a PEFT LoRA folder whose modules are seen as deltas ``B @ A * scaling``.
- :class:`DeltaView`: an expert (either of the above) against its base: ``delta(name)`` in float32.

torch is imported only by the functions that build tensors: headers, plans and raw byte copies work
on dtype codes alone, so a layer swap (``layerswap swap``) never pays torch's ~2 s import.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from layerswap.architecture import Architecture, architecture_from_config
from layerswap.errors import (
    CheckpointError,
    ConfigError,
    IncompatibleModelsError,
    InputPathError,
    OutputExistsError,
    WriteFailedError,
)

if TYPE_CHECKING:
    import torch

#: Each safetensors dtype code: its torch dtype name (``config.json`` writes ``"dtype": "bfloat16"``)
#: and its bytes per element, enough to plan, validate and copy tensors without torch.
_DTYPE_TABLE: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}  # fmt: skip
DTYPE_SIZES: dict[str, int] = {code: size for code, (_, size) in _DTYPE_TABLE.items()}
TORCH_DTYPE_NAMES: dict[str, str] = {code: name for code, (name, _) in _DTYPE_TABLE.items()}
FLOAT_CODES = frozenset(code for code, name in TORCH_DTYPE_NAMES.items() if "float" in name)
_CODE_OF_TORCH_NAME = {name: code for code, name in TORCH_DTYPE_NAMES.items()}
#: Names a user may write for an output dtype, and the safetensors code each means.
DTYPE_ALIASES: dict[str, str] = {
    "float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16", "bfloat16": "BF16", "bf16": "BF16",
}  # fmt: skip


def torch_dtype_of(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (imports torch)."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[code])


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype."""
    code = _CODE_OF_TORCH_NAME.get(str(dtype).removeprefix("torch."))
    if code is not None:
        return code
    raise ConfigError(f"dtype {dtype} cannot be stored in safetensors by layerswap: use one of {', '.join(sorted(DTYPE_ALIASES))}")


def parse_dtype_code(value: str | torch.dtype) -> str:
    """``bf16``/``bfloat16``/``BF16``/a torch dtype -> its safetensors code; a ConfigError lists the valid names."""
    if not isinstance(value, str):
        return dtype_code(value)
    key = value.strip()
    if key in DTYPE_SIZES:
        return key
    if key.lower() in DTYPE_ALIASES:
        return DTYPE_ALIASES[key.lower()]
    raise ConfigError(f"unknown dtype {value!r}: use one of {', '.join(sorted(DTYPE_ALIASES))}")


INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "layerswap.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DONOR_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
ADAPTER_DONOR_FILES = ("adapter_config.json",) + DONOR_FILES[2:]
_MAX_HEADER = 100 * 1024 * 1024
_COPY_CHUNK = 64 * 1024 * 1024
_RUN_LIMIT = 256 * 1024 * 1024  # a run of back-to-back tensors is copied once it holds this much


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """Accept ``bf16``/``bfloat16``/``BF16``/a torch dtype; raise a ConfigError listing the valid names."""
    if not isinstance(value, str):
        return value
    return torch_dtype_of(parse_dtype_code(value))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor's bytes lie, known from the header alone."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code, e.g. "BF16"
    file: Path
    offset: int  # absolute byte offset in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype_of(self.dtype)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; read no tensor data.

    Detects zero-byte, truncated and corrupted files and says which file and what to do.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path} is {'empty' if size == 0 else 'truncated'} ({size} bytes): re-download or re-save the checkpoint"
                )
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or header_len > _MAX_HEADER or header_len > size - 8:
                raise CheckpointError(
                    f"{path} is not a valid safetensors file (header length {header_len}, file size {size}): "
                    "re-download or re-save the checkpoint"
                )
            raw = fh.read(header_len)
    except PermissionError as exc:
        raise InputPathError(f"cannot read {path}: permission denied; fix its permissions or pass a readable copy") from exc
    except OSError as exc:  # a folder or a dangling link where a weight file should be
        raise InputPathError(
            f"cannot read {path}: {exc.strerror or exc}; pass a complete model folder"
        ) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a corrupted safetensors header: re-download or re-save the checkpoint") from exc
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} has a malformed header entry for tensor {name!r}: re-save the checkpoint") from exc
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"tensor {name!r} in {path} has unsupported dtype {dtype}")
        itemsize = DTYPE_SIZES[dtype]
        if end - begin != math.prod(shape) * itemsize or begin < 0:
            raise CheckpointError(
                f"tensor {name!r} in {path} has a byte range that does not match its shape: the file is corrupted"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end} but the file has {size}; "
                "re-download or re-save the checkpoint"
            )
        infos[name] = TensorInfo(name, shape, dtype, path, data_start + begin, end - begin)
    return infos, {str(k): str(v) for k, v in metadata.items()}


def _pread_into(info: TensorInfo, target: memoryview) -> None:
    """Fill ``target`` (``info.nbytes`` long) with the tensor's bytes."""
    fd = os.open(info.file, os.O_RDONLY)
    try:
        done = 0
        while done < info.nbytes:
            n = os.preadv(fd, [target[done:]], info.offset + done)
            if n <= 0:
                raise CheckpointError(f"{info.file} ended while reading tensor {info.name!r}: the file is truncated")
            done += n
    finally:
        os.close(fd)


def _read_bytes(info: TensorInfo) -> bytearray:
    buf = bytearray(info.nbytes)
    _pread_into(info, memoryview(buf))
    return buf


def read_tensor_into(info: TensorInfo, out: torch.Tensor, scratch: bytearray | None = None) -> torch.Tensor:
    """Read one tensor into the front of a preallocated flat buffer ``out`` (converting to its dtype).

    Returns a view of ``out`` shaped like the tensor. Streaming passes reuse the same buffers for
    every tensor, because page-faulting a fresh buffer of hundreds of MB costs more than the read
    and the conversion. ``scratch`` (at least ``info.nbytes``) holds the raw bytes when the dtypes differ.
    """
    import torch

    n = info.numel
    if out.dim() != 1 or out.numel() < n or not out.is_contiguous():
        raise ValueError(f"buffer of {out.numel()} elements cannot hold tensor {info.name!r} ({n})")
    view = out[:n]
    if n:
        if info.torch_dtype == out.dtype:
            target = memoryview(view.view(torch.uint8).numpy())
        else:
            if scratch is None or len(scratch) < info.nbytes:
                scratch = bytearray(info.nbytes)
            target = memoryview(scratch)[: info.nbytes]
        _pread_into(info, target)
        if info.torch_dtype != out.dtype:
            view.copy_(torch.frombuffer(scratch, dtype=info.torch_dtype, count=n))
    return view.view(info.shape)


def read_tensor(info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read one tensor from its byte range (a private copy, not a memory map)."""
    import torch

    if info.nbytes == 0:
        tensor = torch.empty(info.shape, dtype=info.torch_dtype)
    else:
        tensor = torch.frombuffer(_read_bytes(info), dtype=info.torch_dtype).reshape(info.shape)
    if dtype is not None and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputPathError(f"{path} is missing: {what}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: fix or regenerate it") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


#: Public name of the JSON reader with one-line errors (config.json, adapter_config.json, ...).
load_json = _load_json


class ModelFolder:
    """A Hugging Face model folder with safetensors weights, opened lazily.

    Only headers are read on open; ``get`` reads one tensor's bytes. Pickled ``.bin`` weights are
    refused: loading them would execute arbitrary code.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputPathError(f"{self.path} does not exist: pass a model folder or a short name like gemma3-270m")
        if not self.path.is_dir():
            raise InputPathError(f"{self.path} is a file, not a model folder: pass the folder that holds config.json")
        config_path = self.path / "config.json"
        if not config_path.exists():
            raise InputPathError(
                f"{self.path} is not a model folder (no config.json): pass a Hugging Face model folder or a PEFT adapter folder"
            )
        self.config: dict[str, Any] = _load_json(config_path, "a model folder needs config.json")
        self._infos: dict[str, TensorInfo] = {}
        for file in self._weight_files():
            infos, _ = read_safetensors_header(file)
            self._infos.update(infos)
        index_path = self.path / INDEX_NAME
        if index_path.exists():
            weight_map = _load_json(index_path, "").get("weight_map", {})
            for name, shard in weight_map.items():
                info = self._infos.get(name)
                if info is None or info.file.name != shard:
                    raise CheckpointError(
                        f"{index_path} maps tensor {name!r} to {shard}, which does not hold it: re-save the checkpoint"
                    )
        self.architecture: Architecture = architecture_from_config(self.config, source=str(config_path))

    def _weight_files(self) -> list[Path]:
        index_path = self.path / INDEX_NAME
        if index_path.exists():
            weight_map = _load_json(index_path, "")
            shards = sorted(set(weight_map.get("weight_map", {}).values()))
            if not shards:
                raise CheckpointError(f"{index_path} has an empty weight_map: re-save the checkpoint")
            for shard in shards:
                if not (self.path / shard).exists():
                    raise CheckpointError(
                        f"{index_path} names shard {shard}, which is missing from {self.path}: copy the missing shard or re-save"
                    )
            return [self.path / s for s in shards]
        single = self.path / "model.safetensors"
        if single.exists():
            return [single]
        others = sorted(self.path.glob("*.safetensors"))
        if others:
            return others
        pickles = [p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise CheckpointError(
                f"{self.path} holds only pickled weights ({pickles[0]}), which layerswap never unpickles: convert it with "
                "AutoModelForCausalLM.from_pretrained(path).save_pretrained(out, safe_serialization=True) where you trust the file"
            )
        raise InputPathError(f"{self.path} has config.json but no *.safetensors weights: pass a complete model folder")

    # -- the named-tensor interface ---------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError as exc:
            raise IncompatibleModelsError(f"tensor {name!r} is not in {self.path}") from exc

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return read_tensor(self.info(name), dtype)

    def iter_tensors(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._infos:
            yield name, self.get(name, dtype)

    @property
    def num_layers(self) -> int:
        return self.architecture.num_layers

    @property
    def num_parameters(self) -> int:
        return sum(i.numel for i in self._infos.values())

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def dtypes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self._infos.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + info.numel
        return counts

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r}, {len(self)} tensors, {self.num_layers} layers)"


# --------------------------------------------------------------------------------------------
# LoRA adapters as deltas
# --------------------------------------------------------------------------------------------

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

    ``delta(name) = B @ A * scaling`` with ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with
    rsLoRA); ``modules_to_save`` are full replacement tensors (their delta needs the base).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputPathError(f"{self.path} is not a folder: pass a PEFT adapter folder")
        self.config: dict[str, Any] = _load_json(self.path / "adapter_config.json", "a PEFT adapter needs adapter_config.json")
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

    def delta(self, name: str, base: ModelFolder | None = None) -> torch.Tensor:
        import torch

        if name in self.modules:
            return self.lora_delta(name)
        if name in self.replacements:
            if base is None:
                raise ConfigError(f"the delta of modules_to_save tensor {name!r} needs the base model")
            return read_tensor(self.replacements[name], torch.float32) - base.get(name, torch.float32)
        raise KeyError(name)

    def layers(self, arch: Architecture) -> set[int]:
        return {layer for n in self.modules if (layer := arch.classify(n).layer) is not None}

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


Checkpoint = ModelFolder | LoraAdapter


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def open_checkpoint(path_or_name: str | os.PathLike[str]) -> Checkpoint:
    """Open a model folder, a PEFT LoRA adapter folder, or a short model name (``gemma3-270m``)."""
    from layerswap.models import resolve_model

    path = resolve_model(path_or_name)
    if is_adapter_folder(path):
        return LoraAdapter(path)
    return ModelFolder(path)


def open_model(path_or_name: str | os.PathLike[str]) -> ModelFolder:
    """Open a full model folder (an adapter here is a mistake: say so)."""
    ckpt = open_checkpoint(path_or_name)
    if isinstance(ckpt, LoraAdapter):
        raise InputPathError(f"{ckpt.path} is a LoRA adapter, not a full model: pass the base model folder here")
    return ckpt


# --------------------------------------------------------------------------------------------
# Experts against their base
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A planned output tensor: its name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        return cls(name, dtype_code(tensor.dtype), tuple(tensor.shape))


def parse_size(value: int | str) -> int:
    """``"5GB"``/``"500MB"``/``1000000`` -> bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]i?B?)?\s*", str(value), re.I)
    if not m:
        raise ConfigError(f"cannot read size {value!r}: write e.g. 5GB, 500MB or a number of bytes")
    unit = (m.group(2) or "").upper().rstrip("B")
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * factor)


def _package_version() -> str:
    from layerswap import __version__

    return __version__


def prepare_output_dir(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """Check an output folder may be written; return its path. Nothing is created yet."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists: choose another path or pass --overwrite")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out: Path) -> None:
    """Tidy up after a writer of ``out`` that was killed: drop its temporary folder, and bring back
    the previous output it had moved aside if the kill fell between the two final renames."""
    parent = out.parent
    if not parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}")
    for path in sorted(parent.iterdir()):
        m = pattern.fullmatch(path.name)
        if not m or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


class AtomicDir:
    """A temporary sibling folder renamed onto ``out`` on success and removed on failure.

    Used for every output folder: an interrupted run leaves either nothing or the previous output.
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        recover_interrupted(Path(out))
        self.out = prepare_output_dir(out, overwrite)
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            try:
                _fsync_tree(self.tmp)  # the rename must never publish files whose data is still only in memory
            except OSError as failed:
                exc = failed
        if exc is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
                raise WriteFailedError(
                    f"writing {self.out} failed: {os.strerror(exc.errno or 0)}; nothing was written. Free space or pick another path"
                ) from exc
            if exc_type is None:
                raise exc
            return
        self.commit()

    def commit(self) -> None:
        old = None
        if self.out.exists():
            if not self.overwrite:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise OutputExistsError(f"output {self.out} appeared while writing: choose another path or pass --overwrite")
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        fsync_dir(self.out.parent)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write a small text file via a temporary sibling and ``os.replace``: never a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_provenance(folder: Path, provenance: Mapping[str, Any]) -> None:
    record = {"layerswap_version": _package_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record.update(provenance)
    (folder / PROVENANCE_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def read_provenance(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(folder) / PROVENANCE_NAME
    return _load_json(path, "") if path.exists() else None


def copy_donor_files(donor: Path, dest: Path, files: Sequence[str] = DONOR_FILES) -> list[str]:
    copied = []
    for name in files:
        src = Path(donor) / name
        if src.exists():
            shutil.copy2(src, dest / name)
            copied.append(name)
    return copied


_SYNC_FILE_RANGE_WRITE = 2
_libc_functions: dict[str, Any] = {}


def _libc(name: str) -> Any:
    """A Linux libc call (``fallocate``, ``sync_file_range``) with (fd, int64, int64, ...) arguments,
    or False where the platform has none."""
    if name not in _libc_functions:
        try:
            import ctypes

            func = getattr(ctypes.CDLL(None, use_errno=True), name)
            func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64] if name == "fallocate" else [
                ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]  # fmt: skip
            _libc_functions[name] = func
        except (OSError, AttributeError):
            _libc_functions[name] = False
    return _libc_functions[name]


def reserve_space(fd: int, size: int) -> None:
    """Give a new file its final size, with its blocks allocated up front where the file system can.

    A disk too small for the output fails here, before any tensor is copied, instead of hours into
    a 16 GB write; and a file whose blocks exist is filled faster (ext4 measured 0.51 s vs 0.64 s for
    2 GB) than one that grows block by block. Where ``fallocate`` is not supported (it never writes
    zeros, unlike ``posix_fallocate``'s fallback) the file is only extended.
    """
    func = _libc("fallocate")
    if func and size > 0:
        import ctypes

        if func(fd, 0, 0, size) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(err, os.strerror(err))
    os.ftruncate(fd, size)


class Writeback:
    """Start writing finished byte ranges to disk from a background thread, without waiting for them.

    Every output is fsynced before its atomic rename. Left alone, the kernel writes a multi-GB
    shard only when that fsync comes, so the disk idles during the copy and the whole write is
    waited for at the end. Asking for writeback (Linux ``sync_file_range``) as each tensor lands
    overlaps the two; a thread makes the request so that the copy never stalls on a busy disk
    queue. Where the call does not exist this does nothing and the final fsync does all the work.
    """

    def __init__(self) -> None:
        self._queue: Any = None
        self._thread: Any = None

    def submit(self, fd: int, offset: int, nbytes: int) -> None:
        func = _libc("sync_file_range")
        if not func or nbytes <= 0:
            return
        if self._thread is None:
            import queue
            import threading

            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(func,), name="layerswap-writeback", daemon=True)
            self._thread.start()
        self._queue.put((fd, offset, nbytes))

    def _run(self, func: Any) -> None:
        while (item := self._queue.get()) is not None:
            func(*item, _SYNC_FILE_RANGE_WRITE)  # a failure only loses the head start: fsync still follows

    def close(self) -> None:
        """Wait for the requests already made (not for the disk); call before closing the files."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class _CopyRun:
    """A byte range to copy from one source file to one output shard: back-to-back tensors merged."""

    first: str  # the first tensor's name, for error messages
    file: Path
    src_offset: int
    fd: int
    dst_offset: int
    nbytes: int

    def continues(self, source: TensorInfo, fd: int, offset: int) -> bool:
        return (
            source.file == self.file
            and fd == self.fd
            and source.offset == self.src_offset + self.nbytes
            and offset == self.dst_offset + self.nbytes
        )


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files already synced cost next to nothing)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


class ShardedWriter:
    """Write planned tensors into sharded safetensors files, atomically.

    The plan (names, dtypes, shapes) is known up front, so every shard's header is written first
    and each tensor goes straight to its offset: no tensor is buffered, and raw bytes can be
    copied from a source file without decoding (:meth:`copy_raw`).

    Use as a context manager; on success the folder holds the shards, the index (when more than
    one shard), the donor's config/tokenizer files and a provenance JSON.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        *,
        max_shard_size: int | str = "5GB",
        donor: str | os.PathLike[str] | None = None,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        adapter: bool = False,
        config_updates: Mapping[str, Any] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the write plan")
        self.specs = {s.name: s for s in specs}
        self.max_shard = parse_size(max_shard_size)
        self.donor = Path(donor) if donor is not None else None
        self.provenance = dict(provenance or {})
        self.adapter = adapter
        self.config_updates = dict(config_updates or {})
        self._atomic = AtomicDir(out, overwrite=overwrite)
        self.out = self._atomic.out
        self._written: set[str] = set()
        self._fds: list[int] = []
        self._run: _CopyRun | None = None  # raw copies not yet done, see copy_raw
        self._failed: str | None = None  # set for good when a raw copy failed: see _flush_run
        self._writeback = Writeback()
        self._where: dict[str, tuple[int, int]] = {}  # name -> (shard index, absolute offset)
        self._shards: list[list[TensorSpec]] = self._plan(list(specs))

    def _plan(self, specs: list[TensorSpec]) -> list[list[TensorSpec]]:
        shards: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            if shards[-1] and size + spec.nbytes > self.max_shard:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += spec.nbytes
        return shards

    def _file_name(self, i: int) -> str:
        if self.adapter:
            return "adapter_model.safetensors"
        if len(self._shards) == 1:
            return "model.safetensors"
        return f"model-{i + 1:05d}-of-{len(self._shards):05d}.safetensors"

    def __enter__(self) -> "ShardedWriter":
        if self.adapter and len(self._shards) > 1:
            self._shards = [[s for shard in self._shards for s in shard]]
        tmp = self._atomic.__enter__()
        try:
            for i, shard in enumerate(self._shards):
                header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
                offset = 0
                for spec in shard:
                    header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]}
                    offset += spec.nbytes
                raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
                raw += b" " * (-len(raw) % 8)
                fd = os.open(tmp / self._file_name(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds.append(fd)
                os.write(fd, len(raw).to_bytes(8, "little") + raw)
                start = 8 + len(raw)
                for spec in shard:
                    self._where[spec.name] = (i, start)
                    start += spec.nbytes
                reserve_space(fd, start)
        except BaseException as exc:
            self._close_fds()
            self._atomic.__exit__(type(exc), exc, None)
            raise
        return self

    def _close_fds(self) -> None:
        self._writeback.close()  # its queue holds these descriptors
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _target(self, name: str) -> tuple[int, int, TensorSpec]:
        if name not in self.specs:
            raise KeyError(f"tensor {name!r} is not in the write plan")
        if name in self._written:
            raise ValueError(f"tensor {name!r} written twice")
        shard, offset = self._where[name]
        return self._fds[shard], offset, self.specs[name]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a tensor (cast to the planned dtype) at its planned place."""
        fd, offset, spec = self._target(name)
        if tuple(tensor.shape) != spec.shape:
            raise ValueError(f"tensor {name!r} has shape {list(tensor.shape)}, planned {list(spec.shape)}")
        import torch

        data = tensor.detach().to("cpu", torch_dtype_of(spec.dtype)).contiguous()
        if data.numel():
            buf = memoryview(data.reshape(-1).view(torch.uint8).numpy())
            self._pwrite_all(fd, buf, offset)
            self._writeback.submit(fd, offset, len(buf))
        self._written.add(name)

    def copy_raw(self, name: str, source: TensorInfo) -> None:
        """Copy a tensor's bytes from a source file unchanged (same dtype and shape required).

        Consecutive tensors that lie back to back in both the source and the output (a layer swap
        takes whole runs of layers from one expert) are copied by one kernel call per 64 MiB, not
        one per tensor; the run is flushed when the next copy does not continue it, and on exit.
        """
        fd, offset, spec = self._target(name)
        if source.dtype != spec.dtype or source.shape != spec.shape:
            raise ValueError(f"raw copy of {name!r}: source is {source.dtype}{list(source.shape)}, planned {spec.dtype}{list(spec.shape)}")
        run = self._run
        if run is not None and run.continues(source, fd, offset):
            run.nbytes += source.nbytes
        else:
            self._flush_run()
            self._run = _CopyRun(name, source.file, source.offset, fd, offset, source.nbytes)
        self._written.add(name)
        if self._run is not None and self._run.nbytes >= _RUN_LIMIT:
            self._flush_run()  # long runs go now, so progress bars follow the bytes actually copied

    def _flush_run(self) -> None:
        run, self._run = self._run, None
        if run is None or run.nbytes == 0:
            return
        try:
            self._copy_run(run)
        except BaseException:
            # Its tensors already count as written: the writer must never commit now, even if a
            # caller swallowed the error, or they would stay zeros in a published output.
            self._failed = f"copying tensor {run.first!r} and the ones after it failed"
            raise

    def _copy_run(self, run: _CopyRun) -> None:
        src = os.open(run.file, os.O_RDONLY)
        try:
            done = 0
            while done < run.nbytes:
                n = min(_COPY_CHUNK, run.nbytes - done)
                src_at, dst_at = run.src_offset + done, run.dst_offset + done
                try:
                    if not hasattr(os, "copy_file_range"):  # not Linux: no in-kernel copy between files
                        raise OSError(errno.ENOSYS, "copy_file_range is not available")
                    copied = os.copy_file_range(src, run.fd, n, src_at, dst_at)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    copied = self._copy_across(src, run.fd, n, src_at, dst_at)
                if copied <= 0:
                    raise CheckpointError(f"{run.file} ended while copying tensor {run.first!r} and the ones after it: the file is truncated")
                self._writeback.submit(run.fd, dst_at, copied)
                done += copied
        finally:
            os.close(src)

    @staticmethod
    def _copy_across(src: int, dst: int, n: int, src_offset: int, dst_offset: int) -> int:
        """Copy between file systems (no ``copy_file_range``): ``sendfile`` in the kernel, else read+write."""
        try:
            os.lseek(dst, dst_offset, os.SEEK_SET)
            return os.sendfile(dst, src, src_offset, n)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK):  # macOS: sockets only
                raise
        chunk = os.pread(src, n, src_offset)
        ShardedWriter._pwrite_all(dst, memoryview(chunk), dst_offset)
        return len(chunk)

    @staticmethod
    def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
        done = 0
        while done < len(buf):
            done += os.pwrite(fd, buf[done:], offset + done)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self._flush_run()
                if self._failed:
                    raise RuntimeError(f"{self._failed}: nothing was written")
                missing = [n for n in self.specs if n not in self._written]
                if missing:
                    raise RuntimeError(f"{len(missing)} planned tensors were never written, first {missing[0]!r}")
                self._writeback.close()
                for fd in self._fds:  # on the writing descriptors: a late write error is reported here
                    os.fsync(fd)
            self._close_fds()
            if exc is None:
                self._finish(self._atomic.tmp)
        except BaseException as inner:
            self._close_fds()
            self._atomic.__exit__(type(inner), inner, None)
            raise
        self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self, tmp: Path) -> None:
        if len(self._shards) > 1:
            weight_map = {spec.name: self._file_name(i) for i, shard in enumerate(self._shards) for spec in shard}
            total = sum(s.nbytes for s in self.specs.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if self.donor is not None:
            copy_donor_files(self.donor, tmp, ADAPTER_DONOR_FILES if self.adapter else DONOR_FILES)
        if self.config_updates:
            cfg_name = "adapter_config.json" if self.adapter else "config.json"
            cfg_path = tmp / cfg_name
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
            cfg.update(self.config_updates)
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        write_provenance(tmp, self.provenance)


def write_tensors(
    out: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    **kwargs: Any,
) -> Path:
    """Write an in-memory state dict as a (sharded) safetensors folder; see :class:`ShardedWriter`."""
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    specs = [TensorSpec.of(name, t) for name, t in items]
    with ShardedWriter(out, specs, **kwargs) as writer:
        for name, tensor in items:
            writer.write(name, tensor)
    return writer.out
