"""A Hugging Face model folder (single or sharded safetensors with index), opened lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from layerswap.errors import CheckpointError, IncompatibleModelsError, InputPathError
from layerswap.io.architecture import Architecture, architecture_from_config
from layerswap.io.reader import TensorInfo, load_json, read_safetensors_header, read_tensor

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
#: Weight files layerswap never opens: unpickling them could run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
        self.config: dict[str, Any] = load_json(config_path, "a model folder needs config.json")
        self._infos: dict[str, TensorInfo] = {}
        for file in self._weight_files():
            infos, _ = read_safetensors_header(file)
            self._infos.update(infos)
        index_path = self.path / INDEX_NAME
        if index_path.exists():
            weight_map = load_json(index_path, "").get("weight_map", {})
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
            weight_map = load_json(index_path, "")
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
