"""Model setup: the partitions from the base's tensor names, the tokenizer, and the model to train.

Partitions are resolved from the checkpoint's names before anything loads, so a wrong layer index
fails in a second. The model then trains only its partition: ``requires_grad`` on exactly those
tensors for a full fine-tune, LoRA adapters on exactly those layers for ``method: lora``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerswap.errors import CheckpointError, ConfigError, InputPathError
from layerswap.finetune.config import FinetuneConfig
from layerswap.finetune.freezing import Partition, apply_partition, lora_target_modules, partition_parameters, resolve_partition
from layerswap.io import GLOBAL_MODULES, Architecture, ModelFolder
from layerswap.io.model_folder import check_complete_load


@dataclass(frozen=True)
class Partitions:
    """The partition of each data set (one shared by all unless simultaneous) and their union."""

    by_data: dict[str, Partition]
    union: Partition


def resolve_partitions(cfg: FinetuneConfig, arch: Architecture, present: set[str], mode: str) -> Partitions:
    """Each data set's partition from the config; in simultaneous mode one per ``--partition``."""
    named = cfg.named_data()
    if mode == "simultaneous":
        by_data = {
            n: resolve_partition(
                arch,
                present,
                train_layers=cfg.partition[n],
                train_modules=cfg.train_modules,
                train_global=cfg.train_global or ["none"],
            )
            for n in named
        }
        first, *rest = named
        overlap = set(by_data[first].layers).intersection(*[set(by_data[n].layers) for n in rest])
        if overlap:
            warnings.warn(f"partitions overlap in layers {sorted(overlap)}: those layers learn from every data set", stacklevel=2)
    else:
        one = resolve_partition(
            arch,
            present,
            train_layers=cfg.train_layers,
            freeze_layers=cfg.freeze_layers,
            train_modules=cfg.train_modules,
            # LoRA trains adapters only: no default global modules (the config refuses an explicit choice)
            train_global=cfg.train_global if cfg.train_global is not None or cfg.method == "full" else ["none"],
        )
        by_data = {n: one for n in named}
    parts = by_data.values()
    union = Partition(
        tuple(sorted({layer for p in parts for layer in p.layers})),
        None if any(p.modules is None for p in parts) else tuple(sorted({m for p in parts for m in (p.modules or ())})),
        tuple(g for g in GLOBAL_MODULES if any(g in p.global_modules for p in parts)),
    )
    return Partitions(by_data, union)


def check_seq_len(model_config: Any, seq_len: int) -> None:
    """Refuse a ``seq_len`` beyond the model's position limit before any data is tokenized."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ConfigError(f"seq_len {seq_len} is beyond this model's maximum of {limit} positions: use --seq-len {limit} or less")


def load_tokenizer(cfg: FinetuneConfig, base_path: Path) -> Any:
    """The base's tokenizer (or ``--tokenizer``), with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    from layerswap.io import resolve_model

    source = Path(resolve_model(cfg.tokenizer)) if cfg.tokenizer else base_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)  # False, not None: never a prompt
    except (OSError, ValueError) as exc:
        if "custom code" in str(exc):
            raise CheckpointError(
                f"the tokenizer of {source} needs its own Python code (auto_map), which layerswap never runs: "
                "pass --tokenizer with a built-in tokenizer"
            ) from None
        raise InputPathError(f"no tokenizer in {source}: pass --tokenizer PATH ({type(exc).__name__})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class TrainableModel:
    """The model with only its partition trainable, and what the recipe needs to know about it.

    ``groups`` holds the trainable parameters of each data set in ``names`` order (simultaneous
    mode switches between them); ``trainable_names`` are the tensors a full fine-tune rewrites.
    """

    model: Any
    groups: list[list[Any]]
    counts: dict[str, int]
    trainable_names: set[str] = field(default_factory=set)
    lora: dict[str, Any] = field(default_factory=dict)


def setup_model(
    cfg: FinetuneConfig, base_path: Path, arch: Architecture, present: set[str], partitions: Partitions, names: list[str]
) -> TrainableModel:
    """Load the base in float32 (seeded: LoRA's initialisation draws from it) and make its partition trainable."""
    import torch
    from transformers import AutoModelForCausalLM

    ModelFolder(base_path).check_transformers_names()  # safetensors only: transformers never falls back to a pickle
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loading = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True, output_loading_info=True)
    check_complete_load(base_path, loading)  # never train from random weights where a tensor is missing
    union = partitions.union
    if cfg.method == "full":
        counts = apply_partition(model, arch, union)
        groups = [list(partition_parameters(model, arch, partitions.by_data[n]).values()) for n in names]
        trainable = TrainableModel(model, groups, counts, {n for n, p in model.named_parameters() if p.requires_grad})
    else:
        trainable = _with_lora(cfg, model, arch, present, partitions, names)
    if cfg.gradient_checkpointing:
        trainable.model.config.use_cache = False
    return trainable


def _with_lora(
    cfg: FinetuneConfig, model: Any, arch: Architecture, present: set[str], partitions: Partitions, names: list[str]
) -> TrainableModel:
    """Wrap the partition's linear modules (on its layers only) in LoRA adapters; the base stays frozen."""
    from peft import LoraConfig, get_peft_model

    union = partitions.union
    targets = lora_target_modules(present, union, cfg.lora_targets)
    some_layers = len(union.layers) < arch.num_layers
    lora_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=list(union.layers) if some_layers else None,
        layers_pattern="layers" if some_layers else None,
        use_rslora=cfg.use_rslora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_cfg)
    counts = {
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }
    groups = [
        [p for n, p in model.named_parameters() if p.requires_grad and arch.classify(n).layer in partitions.by_data[g].layers]
        for g in names
    ]
    lora = {"targets": targets, "r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "use_rslora": cfg.use_rslora}
    return TrainableModel(model, groups, counts, set(), lora)
