"""What a fine-tuning run needs, and every rule between its options, in one pydantic model.

A config that validates is a run that can start: modes against data sets, partitions and ratios
against data names, LoRA options against the method, steps and epochs. What only the model or the
disk can tell (layer indices, sequence length, checkpoints to resume) is checked by the recipe.

The YAML keys are the CLI flags with ``_`` (``train_layers`` <-> ``--train-layers``): the
``layerswap finetune`` options are generated from this model (:mod:`layerswap.cli.options`), each
field's ``description`` being its ``--help`` line. No torch here: the CLI imports it to build its
options.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from layerswap.config import StrictModel
from layerswap.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: ``json_schema_extra`` of a list field written on the command line as one comma-separated value.
_COMMA = {"cli_comma": True}


class FinetuneConfig(StrictModel):
    """Everything a fine-tuning run needs; YAML keys are the CLI flag names with ``_``."""

    base: str = Field(description="Base model folder or embedded name (gemma3-270m).")
    data: list[str] = Field(
        description="Data spec, repeatable: gsm8k, ntrex:sw, tico:sw, tatoeba:sw, FILE.jsonl?prompt=q,completion=a, hf:NAME. "
        "Name it with NAME=SPEC."
    )
    out: str = Field(description="Output folder (HF model for full, PEFT adapter for lora).")
    method: Literal["full", "lora"] = Field("full", description="full or lora (default full).")
    mode: Literal["single", "simultaneous", "mix"] | None = Field(
        None, description="single, simultaneous or mix (default single with one --data)."
    )
    # partition
    train_layers: str | None = Field(None, description="Layers that train, e.g. 0-4,16-17 (others frozen).")
    freeze_layers: str | None = Field(None, description="Layers that stay frozen (the rest train).")
    train_modules: list[str] | None = Field(
        None, description="Module kinds that train: q_proj,v_proj or attention,mlp,norms.", json_schema_extra=_COMMA
    )
    train_global: list[str] | None = Field(
        None, description="Global modules that train: embed_tokens,norm,lm_head, all or none.", json_schema_extra=_COMMA
    )
    partition: dict[str, str] = Field({}, description="Simultaneous mode: NAME=LAYERS per data set, e.g. lang=0-5,16-17.")
    ratio: dict[str, int] = Field({}, description="Simultaneous mode: NAME=N optimizer steps per cycle, e.g. math=2.")
    # schedule
    steps: int | None = Field(None, description="Optimizer steps (else --epochs, default 1 epoch).")
    epochs: float | None = Field(None, description="Epochs over the data, when --steps is not given.")
    lr: float | None = Field(None, description="Peak learning rate (default 5e-5 full, 2e-4 lora).")
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="linear, cosine, constant or constant_with_warmup (default linear)."
    )
    warmup_steps: int = Field(0, description="Warm-up steps (default 0).")
    weight_decay: float = Field(0.0, description="Weight decay (default 0).")
    optim: Literal["adamw", "adafactor"] = Field(
        "adamw",
        description="adamw (two float32 moments per trained weight: with its gradient, 3x the weights) or adafactor "
        "(factored second moments, no first moment: the gradient and under 1% more; docs/finetune.md).",
    )
    max_grad_norm: float = Field(1.0, description="Gradient clipping norm (default 1.0).")
    batch_size: int = Field(4, description="Examples per device per micro-batch (default 4).")
    grad_accum: int = Field(1, description="Micro-batches per optimizer step (default 1).")
    seq_len: int = Field(256, description="Tokens per example / packed block (default 256).")
    # LoRA
    lora_r: int = Field(8, description="LoRA rank (default 8).")
    lora_alpha: float = Field(16.0, description="LoRA alpha (default 16).")
    lora_dropout: float = Field(0.0, description="LoRA dropout (default 0).")
    lora_targets: list[str] | None = Field(
        None, description="LoRA target modules (default the partition's linear modules, else all).", json_schema_extra=_COMMA
    )
    use_rslora: bool = Field(False, description="rsLoRA scaling alpha/sqrt(r).", json_schema_extra={"cli_off": "--no-rslora"})
    merge_lora: bool = Field(False, description="Also write the merged model to OUT/merged.")
    # runtime
    seed: int = Field(0, description="Random seed (default 0).")
    seeds: int = Field(
        1,
        description="Train N runs, seeds SEED, SEED+1, ...: run i writes OUT-s<i> (run 0 writes OUT itself), each "
        "fully determined by its seed (initialisation, data order); the spread between runs is training noise (default 1).",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto, fp32, bf16 or fp16 (default auto: bf16 on capable GPUs, fp32 on CPU)."
    )
    chat_template: Literal["auto", "yes", "no"] = Field(
        "auto", description="Wrap prompt/completion data in the chat template: auto, yes, no (default auto)."
    )
    tokenizer: str | None = Field(None, description="Tokenizer folder when the base has none.")
    data_dir: str | None = Field(None, description="Folder laid out like ../shared/data (else $LAYERSWAP_DATA_DIR).")
    save_steps: int = Field(100, description="Checkpoint every N steps into OUT.work (default 100).")
    save_total_limit: int = Field(2, description="Checkpoints kept (default 2).")
    log_steps: int = Field(1, description="Log the loss every N steps (default 1).")
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Also send the loss curve to tensorboard (kept in OUT/runs) or wandb (default none)."
    )
    work_dir: str | None = Field(None, description="Checkpoint folder (default OUT.work).")
    keep_checkpoints: bool = Field(False, description="Keep OUT.work after success.")
    resume: bool = Field(False, description="Continue an interrupted run from its last checkpoint.")
    overwrite: bool = Field(False, description="Replace an existing output (and stale checkpoints).")
    quiet: bool = Field(False, description="No progress bar.")

    @field_validator("data", mode="before")
    @classmethod
    def _data_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [f"{k}={v}" for k, v in value.items()]
        return value

    @field_validator("train_modules", "train_global", "lora_targets", mode="before")
    @classmethod
    def _csv_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        self._check_numbers()
        for key in ("batch_size", "grad_accum", "seq_len", "lora_r", "save_steps", "log_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive")
        if self.steps is not None and self.steps <= 0:
            raise ValueError("steps must be positive")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs must be positive")
        if not self.data:
            raise ValueError("data names no data set: pass --data SPEC")
        # The rules between options raise ConfigError (one line, no "Value error" prefix), which
        # pydantic passes through unwrapped.
        mode, named = self.resolved_mode(), self.named_data()
        if self.method == "full" and (self.lora_targets or self.merge_lora):
            raise ConfigError("--lora-targets/--merge-lora apply to --method lora")
        self._check_partitions(mode, named)
        if self.method == "lora" and any(g.strip() not in ("", "none") for g in self.train_global or ()):
            raise ConfigError("--train-global applies to full fine-tuning: LoRA trains adapters only")
        return self

    def _check_numbers(self) -> None:
        """Floats finite and in range (a NaN learning rate trains a model of NaNs, silently)."""
        rules = {  # key: (lowest, lowest allowed itself, highest (exclusive) or None, what it means)
            "lr": (0.0, False, None, "a positive number such as 5e-5"),
            "epochs": (0.0, False, None, "a positive number of epochs"),
            "weight_decay": (0.0, True, None, "0 or a positive number such as 0.01"),
            "max_grad_norm": (0.0, True, None, "0 (no clipping) or a positive norm such as 1.0"),
            "lora_alpha": (0.0, False, None, "a positive number such as 16"),
            "lora_dropout": (0.0, True, 1.0, "a probability in [0, 1)"),
        }
        for key, (low, inclusive, high, want) in rules.items():
            value = getattr(self, key)
            if value is None:
                continue
            ok = math.isfinite(value) and (value >= low if inclusive else value > low) and (high is None or value < high)
            if not ok:
                raise ConfigError(f"--{key.replace('_', '-')} {value!r} is out of range: use {want}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds {self.seeds}: there must be at least one run: use --seeds 1, or N >= 2 for N runs")
        for key in ("warmup_steps", "save_total_limit"):
            if getattr(self, key) < 0:
                raise ConfigError(f"--{key.replace('_', '-')} {getattr(self, key)} is negative: use 0 or more")

    def _check_partitions(self, mode: str, named: dict[str, str]) -> None:
        """Layer choices, partitions and ratios agree with the mode and the data names."""
        if mode == "simultaneous":
            if self.train_layers or self.freeze_layers:
                raise ConfigError(
                    "mode simultaneous takes one --partition NAME=LAYERS per data set instead of --train-layers/--freeze-layers"
                )
            absent = [n for n in named if n not in self.partition]
            if absent:
                raise ConfigError(
                    f"mode simultaneous: data set {absent[0]!r} has no --partition {absent[0]}=LAYERS (e.g. 0-5,16-17)"
                )
            extra = [n for n in self.partition if n not in named]
            if extra:
                raise ConfigError(f"--partition {extra[0]!r} names no data set: data sets are {', '.join(named)}")
        elif self.partition:
            raise ConfigError("--partition applies to --mode simultaneous; use --train-layers for one partition")
        if self.ratio and mode != "simultaneous":
            raise ConfigError("--ratio applies to --mode simultaneous")
        bad_ratio = [n for n in self.ratio if n not in named]
        if bad_ratio:
            raise ConfigError(f"--ratio {bad_ratio[0]!r} names no data set: data sets are {', '.join(named)}")
        if mode == "simultaneous":
            ratio_schedule(list(named), self.ratio)  # every count non-negative, not all zero
        if self.train_layers and self.freeze_layers:
            raise ConfigError("pass either --train-layers or --freeze-layers, not both")

    def named_data(self) -> dict[str, str]:
        """``["math=gsm8k", "lang=ntrex:sw"]`` -> ``{"math": ..., "lang": ...}``; unnamed ones get ``data<i>``."""
        named: dict[str, str] = {}
        for i, item in enumerate(self.data):
            head, sep, rest = item.partition("=")
            name, spec = (head, rest) if sep and _NAME.match(head) else (("train" if len(self.data) == 1 else f"data{i}"), item)
            if name in named:
                raise ConfigError(f"data name {name!r} is given twice: use distinct names like math=SPEC lang=SPEC")
            named[name] = spec
        return named

    def resolved_mode(self) -> str:
        """``mode``, or ``single`` for one data set; several data sets must say how they combine."""
        n = len(self.data)
        mode = self.mode or ("single" if n == 1 else None)
        if mode is None:
            raise ConfigError(f"{n} data sets given: pass --mode simultaneous (with --partition NAME=LAYERS) or --mode mix")
        if mode == "single" and n != 1:
            raise ConfigError(f"mode single takes one data set, got {n}: use --mode mix or --mode simultaneous")
        if mode == "simultaneous" and n < 2:
            raise ConfigError("mode simultaneous needs two or more named data sets: --data math=SPEC --data lang=SPEC")
        return mode

    def check_reporting(self) -> None:
        """Refuse ``report_to`` whose package is not installed (the Trainer would fail after the work folder exists)."""
        import importlib.util

        packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(self.report_to, ())
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(
                f"--report-to {self.report_to} needs the {packages[0]} package, which is not installed: "
                f"pip install {packages[0]}, or use --report-to none"
            )

    def seed_runs(self) -> list[FinetuneConfig]:
        """One single-seed config per run: run ``i`` has seed ``seed + i`` and writes :func:`seed_path` of
        ``out`` (and of ``work_dir``); with ``seeds`` 1, this config alone."""
        if self.seeds == 1:
            return [self]
        return [
            self.model_copy(
                update={
                    "seeds": 1,
                    "seed": self.seed + i,
                    "out": seed_path(self.out, i),
                    "work_dir": None if self.work_dir is None else seed_path(self.work_dir, i),
                }
            )
            for i in range(self.seeds)
        ]

    def learning_rate(self) -> float:
        """``lr``, else the usual peak for the method (5e-5 full, 2e-4 LoRA)."""
        return self.lr if self.lr is not None else (2e-4 if self.method == "lora" else 5e-5)


def seed_path(path: str, index: int) -> str:
    """Where run ``index`` of a several-seed run writes: ``path`` itself for run 0, else ``path-s<index>``
    (so a one-seed run is the first run of a three-seed one, and growing ``seeds`` adds runs)."""
    return path if index == 0 else f"{path.rstrip('/')}-s{index}"


def ratio_schedule(names: Sequence[str], ratio: dict[str, int]) -> list[int]:
    """``{"math": 2, "lang": 1}`` -> ``[0, 1, 0]`` (group indices in ``names`` order, interleaved)."""
    counts = [int(ratio.get(n, 1)) for n in names]
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ConfigError(f"ratio {ratio} must give each data set a non-negative count, not all zero")
    left = list(counts)
    schedule: list[int] = []
    # Round-robin over the remaining counts: 2:1 -> [0, 1, 0], so no group waits long for its turn.
    while any(left):
        for g, n in enumerate(left):
            if n:
                schedule.append(g)
                left[g] -= 1
    return schedule
