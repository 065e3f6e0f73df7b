"""A Hugging Face model folder (single or sharded safetensors with index), opened lazily."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from layerswap.errors import CheckpointError, IncompatibleModelsError, InputPathError
from layerswap.io.architecture import Architecture, architecture_from_config, generic_architecture
from layerswap.io.reader import TensorInfo, load_json, read_safetensors_header, read_tensor, refuse_special_files

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

    def __init__(self, path: str | os.PathLike[str], *, need_layers: bool = True) -> None:
        """``need_layers=False`` (evaluate: transformers loads the model) accepts configs without
        ``num_hidden_layers`` and unknown architectures silently; weights and headers are checked the same."""
        self.path = Path(path)
        if not self.path.exists():
            raise InputPathError(f"{self.path} does not exist: pass a model folder or a short name like gemma3-270m")
        if not self.path.is_dir():
            raise InputPathError(f"{self.path} is a file, not a model folder: pass the folder that holds config.json")
        refuse_special_files(self.path, fix="pass a complete model folder")
        config_path = self.path / "config.json"
        if not config_path.exists():
            raise InputPathError(
                f"{self.path} is not a model folder (no config.json): pass a Hugging Face model folder or a PEFT adapter folder"
            )
        self.config: dict[str, Any] = load_json(config_path, "a model folder needs config.json")
        self._infos: dict[str, TensorInfo] = {}
        weight_map = self._read_index()
        for file in self._weight_files(weight_map):
            infos, _ = read_safetensors_header(file)
            self._infos.update(infos)
        index_path = self.path / INDEX_NAME
        for name, shard in (weight_map or {}).items():
            info = self._infos.get(name)
            if info is None or info.file.name != shard:
                raise CheckpointError(
                    f"{index_path} maps tensor {name!r} to {shard}, which does not hold it: re-save the checkpoint"
                )
        if need_layers:
            self.architecture: Architecture = architecture_from_config(self.config, source=str(config_path))
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.architecture = architecture_from_config(self.config, source=str(config_path))
            except CheckpointError:  # no num_hidden_layers (GPT-2 writes n_layer): nothing to check layers against
                self.architecture = generic_architecture(0)
                return
        check_layer_count(self.architecture, self._infos, self.config, config_path)
        check_embedding_shape(self._infos, self.config, config_path)

    def _read_index(self) -> dict[str, str] | None:
        """The index's weight_map, every shard a plain file name of this folder (checked before any is opened)."""
        index_path = self.path / INDEX_NAME
        if not os.path.lexists(index_path):
            return None
        weight_map = load_json(index_path, "a sharded model needs its index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(f"{index_path} has no weight_map of tensor names to shard files: re-save the checkpoint")
        if not weight_map:
            raise CheckpointError(f"{index_path} has an empty weight_map: re-save the checkpoint")
        for shard in set(weight_map.values()):
            if not is_plain_name(shard) or not shard.endswith(".safetensors"):
                raise CheckpointError(
                    f"{index_path} names a shard outside the folder or not a .safetensors file ({shard[:80]!r}): "
                    "an index may only name *.safetensors files of its own folder; re-save the checkpoint"
                )
        return weight_map

    def _weight_files(self, weight_map: dict[str, str] | None) -> list[Path]:
        if weight_map is not None:
            index_path = self.path / INDEX_NAME
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not os.path.lexists(self.path / shard):
                    raise CheckpointError(
                        f"{index_path} names shard {shard}, which is missing from {self.path}: copy the missing shard or re-save"
                    )
            return [self.path / s for s in shards]
        single = self.path / "model.safetensors"
        if os.path.lexists(single):
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

    def check_transformers_names(self) -> None:
        """transformers loads only ``model.safetensors`` or an index (with ``use_safetensors=True``); a folder whose
        weights have other names (beside a pickle, transformers would fall back to it) is refused in one line."""
        if not any(os.path.lexists(self.path / name) for name in ("model.safetensors", INDEX_NAME)):
            raise CheckpointError(
                f"{self.path} holds its weights under other names than model.safetensors or {INDEX_NAME}, which "
                "transformers cannot load: rename the file to model.safetensors (or re-save the model with save_pretrained)"
            )

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


def is_plain_name(name: str) -> bool:
    """A file name of the folder itself: no separators, no ``..``, not absolute, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0")) and not os.path.isabs(name)


def check_layer_count(arch: Architecture, infos: dict[str, TensorInfo], config: dict[str, Any], source: Path) -> None:
    """The weights must hold exactly layers 0..N-1 of config.json's N (multimodal configs: not checked)."""
    if isinstance(config.get("text_config"), dict):
        return  # a vision tower's layers share the naming; its decoder is checked where it is used
    layers = {role.layer for role in map(arch.classify, infos) if role.layer is not None}
    if not layers:
        return
    n = arch.num_layers
    extra = config.get("num_nextn_predict_layers")  # multi-token-prediction layers stored after the decoder's
    if max(layers) >= n + (extra if type(extra) is int and extra > 0 else 0):
        raise CheckpointError(
            f"{source} says {n} layers but the weights hold layer {max(layers)}: fix num_hidden_layers in config.json "
            "(it must match the weights) or re-save the checkpoint"
        )
    missing = sorted(set(range(n)) - layers)
    if missing:
        raise CheckpointError(
            f"{source} says {n} layers but the weights lack layer {missing[0]} ({len(layers)} present): fix num_hidden_layers "
            "in config.json (it must match the weights) or re-save the checkpoint"
        )


#: Tensors shaped ``[vocab_size, hidden_size]`` in the common architectures.
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "lm_head.weight")


def _shape_mismatch(tensors: Mapping[str, Any], config: dict[str, Any]) -> str | None:
    """Where config's ``hidden_size``/``vocab_size``/layer count contradict the tensors (with ``.shape``), else None."""
    if isinstance(config.get("text_config"), dict):
        return None
    for name, info in tensors.items():
        if not name.endswith(_EMBEDDINGS) or len(info.shape) != 2:
            continue
        for field, size in (("vocab_size", info.shape[0]), ("hidden_size", info.shape[1])):
            said = config.get(field)
            if type(said) is int and said != size:
                return f"says {field} {said} but tensor {name} is {list(info.shape)}"
    return None


def check_embedding_shape(infos: Mapping[str, Any], config: dict[str, Any], source: Path) -> None:
    """config.json's ``hidden_size`` and ``vocab_size`` must be the embedding's shape (transformers would
    refuse the folder, or a writer would publish a config that contradicts its weights)."""
    problem = _shape_mismatch(infos, config)
    if problem:
        raise CheckpointError(f"{source} {problem}: fix config.json (it must match the weights) or re-save the checkpoint")


def check_donor_config(donor: Path, tensors: Mapping[str, Any], updates: Mapping[str, Any]) -> None:
    """The donor's config.json (with the writer's updates) must describe the tensors about to be written:
    checked before anything is written, so a donor from another model never publishes a contradicting config."""
    path = donor / "config.json"
    config = {**load_json(path, "a donor model folder needs config.json"), **updates}
    problem = _shape_mismatch(tensors, config)
    if problem is None and not isinstance(config.get("text_config"), dict):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arch = architecture_from_config(config, source=str(path))
            layers = {role.layer for role in map(arch.classify, tensors) if role.layer is not None}
            extra = config.get("num_nextn_predict_layers")
            extra = extra if type(extra) is int and extra > 0 else 0  # multi-token-prediction layers after the decoder's
            if layers and not arch.num_layers <= max(layers) + 1 <= arch.num_layers + extra:
                problem = f"says {arch.num_layers} layers but the merged weights have {max(layers) + 1}"
        except CheckpointError:
            pass  # no layer count to compare
    if problem:
        raise IncompatibleModelsError(
            f"donor {donor}: its config.json {problem}: take the config from the base or an expert (donor: base or a label)"
        )


def check_complete_load(path: str | os.PathLike[str], loading_info: Mapping[str, Any] | None) -> None:
    """A model transformers loaded must have found every tensor it needs: one it had to initialise at random
    (an untied ``lm_head.weight`` missing from the weights) would make every score meaningless."""
    missing = sorted((loading_info or {}).get("missing_keys") or [])
    if missing:
        raise CheckpointError(
            f"{path} lacks tensor {missing[0]!r}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}, which "
            "transformers would fill with random values: re-save the complete model (or fix tie_word_embeddings in config.json)"
        )


def check_tokenizer_fits(tokenizer: Any, model: Any, where: str | os.PathLike[str]) -> None:
    """Every token id the tokenizer can produce must have a row in the model's embeddings (an id past the end
    is an index error mid-run, or on a GPU a device-side assert)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise IncompatibleModelsError(
            f"the tokenizer of {where} has {len(tokenizer)} tokens but the model's embeddings have {rows} rows: "
            "use the model's own tokenizer (or one made for it)"
        )
