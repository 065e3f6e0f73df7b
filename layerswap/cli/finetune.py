"""``layerswap finetune``: a thin layer over :func:`layerswap.finetune.train.finetune`.

Flags and YAML keys share names (``--train-layers`` <-> ``train_layers``); flags given on the
command line win over ``--config`` keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from layerswap.cli import app
from layerswap.cli.common import parse_csv, parse_named
from layerswap.errors import ConfigError

_METHODS = ("full", "lora")
_MODES = ("single", "simultaneous", "mix")


@app.command("finetune")
def finetune_cmd(
    base: str | None = typer.Option(None, help="Base model folder or embedded name (gemma3-270m)."),
    data: list[str] | None = typer.Option(
        None,
        help="Data spec, repeatable: gsm8k, ntrex:sw, tico:sw, tatoeba:sw, FILE.jsonl?prompt=q,completion=a, hf:NAME. Name it with NAME=SPEC.",
    ),
    out: str | None = typer.Option(None, help="Output folder (HF model for full, PEFT adapter for lora)."),
    method: str | None = typer.Option(None, help="full or lora (default full)."),
    mode: str | None = typer.Option(None, help="single, simultaneous or mix (default single with one --data)."),
    train_layers: str | None = typer.Option(None, help="Layers that train, e.g. 0-4,16-17 (others frozen)."),
    freeze_layers: str | None = typer.Option(None, help="Layers that stay frozen (the rest train)."),
    train_modules: str | None = typer.Option(None, help="Module kinds that train: q_proj,v_proj or attention,mlp,norms."),
    train_global: str | None = typer.Option(None, help="Global modules that train: embed_tokens,norm,lm_head, all or none."),
    partition: list[str] | None = typer.Option(None, help="Simultaneous mode: NAME=LAYERS per data set, e.g. lang=0-5,16-17."),
    ratio: list[str] | None = typer.Option(None, help="Simultaneous mode: NAME=N optimizer steps per cycle, e.g. math=2."),
    steps: int | None = typer.Option(None, help="Optimizer steps (else --epochs, default 1 epoch)."),
    epochs: float | None = typer.Option(None, help="Epochs over the data, when --steps is not given."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default 5e-5 full, 2e-4 lora)."),
    schedule: str | None = typer.Option(None, help="linear, cosine, constant or constant_with_warmup (default linear)."),
    warmup_steps: int | None = typer.Option(None, help="Warm-up steps (default 0)."),
    weight_decay: float | None = typer.Option(None, help="AdamW weight decay (default 0)."),
    max_grad_norm: float | None = typer.Option(None, help="Gradient clipping norm (default 1.0)."),
    batch_size: int | None = typer.Option(None, help="Examples per device per micro-batch (default 4)."),
    grad_accum: int | None = typer.Option(None, help="Micro-batches per optimizer step (default 1)."),
    seq_len: int | None = typer.Option(None, help="Tokens per example / packed block (default 256)."),
    lora_r: int | None = typer.Option(None, help="LoRA rank (default 8)."),
    lora_alpha: float | None = typer.Option(None, help="LoRA alpha (default 16)."),
    lora_dropout: float | None = typer.Option(None, help="LoRA dropout (default 0)."),
    lora_targets: str | None = typer.Option(None, help="LoRA target modules (default the partition's linear modules, else all)."),
    use_rslora: bool | None = typer.Option(None, "--use-rslora/--no-rslora", help="rsLoRA scaling alpha/sqrt(r)."),
    merge_lora: bool | None = typer.Option(
        None, "--merge-lora/--no-merge-lora", help="Also write the merged model to OUT/merged."
    ),
    seed: int | None = typer.Option(None, help="Random seed (default 0)."),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory."
    ),
    precision: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16 (default auto: bf16 on capable GPUs, fp32 on CPU)."),
    chat_template: str | None = typer.Option(
        None, help="Wrap prompt/completion data in the chat template: auto, yes, no (default auto)."
    ),
    tokenizer: str | None = typer.Option(None, help="Tokenizer folder when the base has none."),
    data_dir: str | None = typer.Option(None, help="Folder laid out like ../shared/data (else $LAYERSWAP_DATA_DIR)."),
    save_steps: int | None = typer.Option(None, help="Checkpoint every N steps into OUT.work (default 100)."),
    save_total_limit: int | None = typer.Option(None, help="Checkpoints kept (default 2)."),
    log_steps: int | None = typer.Option(None, help="Log the loss every N steps (default 1)."),
    work_dir: str | None = typer.Option(None, help="Checkpoint folder (default OUT.work)."),
    keep_checkpoints: bool | None = typer.Option(
        None, "--keep-checkpoints/--no-keep-checkpoints", help="Keep OUT.work after success."
    ),
    resume: bool | None = typer.Option(
        None, "--resume/--no-resume", help="Continue an interrupted run from its last checkpoint."
    ),
    overwrite: bool | None = typer.Option(
        None, "--overwrite/--no-overwrite", help="Replace an existing output (and stale checkpoints)."
    ),
    quiet: bool | None = typer.Option(None, "--quiet/--no-quiet", help="No progress bar."),
    config: Path | None = typer.Option(None, help="YAML config; its keys are these flags with underscores."),
) -> None:
    """Fine-tune a model (full or LoRA) on chosen layers; simultaneous and mixed multi-data modes."""
    from layerswap.config import load_config, validate_config
    from layerswap.finetune.train import FinetuneConfig, finetune

    if method is not None and method not in _METHODS:
        raise ConfigError(f"--method {method!r}: use full or lora")
    if mode is not None and mode not in _MODES:
        raise ConfigError(f"--mode {mode!r}: use single, simultaneous or mix")
    ratio_map: dict[str, Any] | None = None
    if ratio:
        ratio_map = {}
        for name, value in parse_named(ratio, option="--ratio").items():
            try:
                ratio_map[name] = int(value)
            except ValueError:
                raise ConfigError(f"--ratio {name}={value}: the count must be a whole number") from None
    overrides: dict[str, Any] = {
        "base": base,
        "data": list(data) if data else None,
        "out": out,
        "method": method,
        "mode": mode,
        "train_layers": train_layers,
        "freeze_layers": freeze_layers,
        "train_modules": parse_csv(train_modules) or None,
        "train_global": parse_csv(train_global) or ([] if train_global is not None else None),
        "partition": parse_named(partition, option="--partition") if partition else None,
        "ratio": ratio_map,
        "steps": steps,
        "epochs": epochs,
        "lr": lr,
        "schedule": schedule,
        "warmup_steps": warmup_steps,
        "weight_decay": weight_decay,
        "max_grad_norm": max_grad_norm,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "seq_len": seq_len,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "lora_targets": parse_csv(lora_targets) or None,
        "use_rslora": use_rslora,
        "merge_lora": merge_lora,
        "seed": seed,
        "gradient_checkpointing": gradient_checkpointing,
        "precision": precision,
        "chat_template": chat_template,
        "tokenizer": tokenizer,
        "data_dir": data_dir,
        "save_steps": save_steps,
        "save_total_limit": save_total_limit,
        "log_steps": log_steps,
        "work_dir": work_dir,
        "keep_checkpoints": keep_checkpoints,
        "resume": resume,
        "overwrite": overwrite,
        "quiet": quiet,
    }
    if config is not None:
        cfg = load_config(FinetuneConfig, config, overrides)
    else:
        missing = [f"--{k}" for k in ("base", "data", "out") if not overrides[k]]
        if missing:
            raise ConfigError(
                f"missing {', '.join(missing)}: e.g. layerswap finetune --base gemma3-270m --data gsm8k --out experts/math"
            )
        cfg = validate_config(FinetuneConfig, {k: v for k, v in overrides.items() if v is not None}, source="command line")
    path = finetune(cfg)
    print(path)
