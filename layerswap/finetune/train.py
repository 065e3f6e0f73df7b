"""The fine-tuning recipe, top to bottom: config -> data -> model + partition -> Trainer -> output.

Built on the Hugging Face ``Trainer`` so ``accelerate launch -m layerswap finetune ...``
runs the same recipe with DDP, FSDP or DeepSpeed. Three modes:

- ``single``: one data set, one partition (``train_layers``/``freeze_layers``/``train_modules``).
- ``simultaneous``: several named data sets, each with its own partition (``partition``).
  Optimizer steps alternate between the sets by ``ratio``; a step's micro-batches all come from
  one set and only that set's partition has ``requires_grad`` during its backward, so the other
  partition gets no gradient (``None``) and AdamW skips it entirely: no moment update, no weight
  decay, no step count.
- ``mix``: the data-mixing baseline: all sets shuffled together, one partition.

Outputs are written atomically: a full fine-tune is a Hugging Face folder whose frozen tensors
are byte copies of the base (so they are bit-identical by construction); a LoRA run is a PEFT
adapter (optionally plus ``merged/``). Both carry ``layerswap.json`` with the partition, the data
and the hyper-parameters, and ``loss.csv``/``loss.png``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import field_validator, model_validator

from layerswap.architecture import GLOBAL_MODULES
from layerswap.checkpoint import AtomicDir, ModelFolder, ShardedWriter, TensorSpec, prepare_output_dir, write_provenance
from layerswap.config import StrictModel
from layerswap.errors import CheckpointError, ConfigError, InputPathError, OutputExistsError
from layerswap.finetune.data import AlternatingBatchSampler, Collator, GroupedDataset, TokenizedData, load_dataset, ratio_schedule
from layerswap.finetune.freezing import (
    Partition,
    apply_partition,
    lora_target_modules,
    partition_parameters,
    resolve_partition,
)
from layerswap.progress import bar, is_quiet, set_quiet

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: Config keys that may change between an interrupted run and its ``--resume``.
_RESUME_FREE = {"resume", "overwrite", "quiet", "steps", "save_steps", "save_total_limit", "keep_checkpoints", "log_steps"}


class FinetuneConfig(StrictModel):
    """Everything a fine-tuning run needs; YAML keys are the CLI flag names with ``_``."""

    base: str
    data: list[str]
    out: str
    method: Literal["full", "lora"] = "full"
    mode: Literal["single", "simultaneous", "mix"] | None = None
    # partition
    train_layers: str | None = None
    freeze_layers: str | None = None
    train_modules: list[str] | None = None
    train_global: list[str] | None = None
    partition: dict[str, str] = {}
    ratio: dict[str, int] = {}
    # schedule
    steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 256
    # LoRA
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None
    use_rslora: bool = False
    merge_lora: bool = False
    # runtime
    seed: int = 0
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    chat_template: Literal["auto", "yes", "no"] = "auto"
    tokenizer: str | None = None
    data_dir: str | None = None
    save_steps: int = 100
    save_total_limit: int = 2
    log_steps: int = 1
    work_dir: str | None = None
    keep_checkpoints: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

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
        for key in ("batch_size", "grad_accum", "seq_len", "lora_r", "save_steps", "log_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive")
        if self.steps is not None and self.steps <= 0:
            raise ValueError("steps must be positive")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs must be positive")
        if not self.data:
            raise ValueError("data names no data set: pass --data SPEC")
        return self

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
        n = len(self.data)
        mode = self.mode or ("single" if n == 1 else None)
        if mode is None:
            raise ConfigError(f"{n} data sets given: pass --mode simultaneous (with --partition NAME=LAYERS) or --mode mix")
        if mode == "single" and n != 1:
            raise ConfigError(f"mode single takes one data set, got {n}: use --mode mix or --mode simultaneous")
        if mode == "simultaneous" and n < 2:
            raise ConfigError("mode simultaneous needs two or more named data sets: --data math=SPEC --data lang=SPEC")
        return mode

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.method == "lora" else 5e-5)


# --------------------------------------------------------------------------------------------
# Trainer pieces
# --------------------------------------------------------------------------------------------


class TokenMeter:
    """Counts real (non-pad) tokens trained on, for tokens/s."""

    def __init__(self) -> None:
        self.tokens = 0
        self.start = time.perf_counter()
        self.step_times: list[float] = []
        self._step_start: float | None = None

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def _trainer_class():
    """Build the Trainer subclass lazily (transformers imports are slow)."""
    from transformers import Trainer

    class PartitionTrainer(Trainer):
        """A ``Trainer`` that, in simultaneous mode, lets each batch update only its own partition."""

        def __init__(
            self,
            *args: Any,
            groups: list[list[torch.nn.Parameter]] | None = None,
            batch_sampler: AlternatingBatchSampler | None = None,
            meter: TokenMeter | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.groups = groups
            self.alternating_sampler = batch_sampler
            self.meter = meter
            self._active: int | None = None

        def get_train_dataloader(self):  # noqa: ANN201
            if self.alternating_sampler is None:
                return super().get_train_dataloader()
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.train_dataset, batch_sampler=self.alternating_sampler, collate_fn=self.data_collator, num_workers=0
            )
            return self.accelerator.prepare(loader)

        def _activate(self, group: int) -> None:
            if self.groups is None or group == self._active:
                return
            for g, params in enumerate(self.groups):
                if g != group:
                    for p in params:
                        p.requires_grad_(False)
            for p in self.groups[group]:
                p.requires_grad_(True)
            self._active = group

        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001, ANN201
            group = inputs.pop("group", None)
            if self.groups is not None:
                if group is None:
                    raise RuntimeError("simultaneous training got a batch without its data group")
                self._activate(int(group))
            if self.meter is not None and "attention_mask" in inputs:
                self.meter.tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return PartitionTrainer


def _callbacks(meter: TokenMeter, csv_path: Path, group_of_step, total_steps: int, keep_final: bool):  # noqa: ANN001
    from transformers import TrainerCallback

    class ProgressAndLoss(TrainerCallback):
        """A progress bar (step, loss, tokens/s) and a loss CSV appended as training goes."""

        def __init__(self) -> None:
            self.bar = None
            self.loss: float | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.bar = bar(desc="finetune", total=state.max_steps or total_steps, unit="step", initial=state.global_step)
            meter.start = time.perf_counter()
            meter.tokens = 0
            if csv_path.exists():  # a resumed run: drop rows past the checkpoint
                rows = csv_path.read_text().splitlines()
                keep = [r for r in rows[1:] if int(r.split(",")[0]) <= state.global_step]
                csv_path.write_text("\n".join(rows[:1] + keep) + "\n")
            else:
                csv_path.write_text("step,group,loss,learning_rate,grad_norm,tokens_per_s\n")

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            meter._step_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step >= state.max_steps and state.global_step % args.save_steps and not keep_final:
                control.should_save = False  # the output is written next; a last checkpoint would be thrown away
            if meter._step_start is not None:
                meter.step_times.append(time.perf_counter() - meter._step_start)
            if self.bar is not None:
                self.bar.n = state.global_step
                post = {"tok/s": f"{meter.rate():.0f}"}
                if self.loss is not None:
                    post = {"loss": f"{self.loss:.4f}", **post}
                self.bar.set_postfix(post, refresh=False)
                self.bar.refresh()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
                with open(csv_path, "a") as fh:
                    fh.write(
                        f"{state.global_step},{group_of_step(state.global_step)},{self.loss},{logs.get('learning_rate', '')},"
                        f"{logs.get('grad_norm', '')},{meter.rate():.1f}\n"
                    )

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.close()

    return ProgressAndLoss()


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def default_work_dir(out: Path) -> Path:
    """Checkpoints and the running loss log live beside the output: ``<out>.work``."""
    return out.parent / f"{out.name}.work"


def _precision(choice: str) -> tuple[bool, bool]:
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return (cuda and torch.cuda.is_bf16_supported()), False
    if choice == "bf16":
        if not cuda and not torch.backends.mps.is_available():
            # bf16 autocast runs on CPU too, but slowly: allow it, the user asked for it.
            pass
        return True, False
    if choice == "fp16":
        if not cuda:
            raise ConfigError("precision fp16 needs a CUDA GPU: use fp32 or bf16 on CPU")
        return False, True
    return False, False


def _checkpointing_args(training_args_cls: Any, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing without re-entrant autograd: frozen inputs need no ``requires_grad`` trick.

    transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``; accept both.
    """
    kwargs = {"use_reentrant": False} if enabled else None
    fields = getattr(training_args_cls, "__dataclass_fields__", {})
    if "activation_checkpointing" in fields:
        return {"activation_checkpointing": enabled, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": enabled, "gradient_checkpointing_kwargs": kwargs}


def _last_complete_checkpoint(work: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (the Trainer writes it last) parses.

    The Trainer writes checkpoints in place, so a run killed while saving leaves an incomplete
    newest checkpoint; resuming must skip it rather than fail on it."""
    best: tuple[int, Path] | None = None
    for folder in work.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[-1]
        if not step.isdigit():
            continue
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if best is None or int(step) > best[0]:
            best = (int(step), folder)
    return str(best[1]) if best else None


def _prepare_work_dir(cfg: FinetuneConfig, work: Path, *, create: bool = True) -> str | None:
    """Return the checkpoint to resume from, or None; refuse stale work unless told what to do.

    ``create=False`` only checks, so that a mistake found later (data, partition) leaves no folder."""
    run_file = work / "run_config.json"
    current = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUME_FREE}
    last = _last_complete_checkpoint(work) if work.is_dir() else None
    if cfg.resume:
        if last is None:
            raise InputPathError(
                f"--resume: no checkpoint in {work}; start without --resume (checkpoints are saved every {cfg.save_steps} steps)"
            )
        if run_file.exists():
            saved = json.loads(run_file.read_text())
            for key in sorted(set(saved) | set(current)):
                if saved.get(key) != current.get(key):
                    raise ConfigError(
                        f"--resume: {key} was {saved.get(key)!r} in the interrupted run, now {current.get(key)!r}: use the same settings"
                    )
        return last
    if last is not None and not cfg.overwrite:
        raise OutputExistsError(
            f"{work} holds checkpoints of an interrupted run: pass --resume to continue or --overwrite to start over"
        )
    if not create or int(os.environ.get("RANK", "0")) != 0:
        return None  # under accelerate launch only the main process clears and prepares the folder
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run_file.write_text(json.dumps(current, indent=2))
    return None


def _load_data(cfg: FinetuneConfig, tokenizer: Any, seq_len: int) -> list[TokenizedData]:
    return [
        load_dataset(spec, tokenizer, seq_len, name=name, data_dir=cfg.data_dir, chat_template=cfg.chat_template)
        for name, spec in cfg.named_data().items()
    ]


def _check_seq_len(model_config: Any, seq_len: int) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and seq_len > limit:
        raise ConfigError(f"seq_len {seq_len} is beyond this model's maximum of {limit} positions: use --seq-len {limit} or less")


def _write_full(model: Any, base: ModelFolder, trainable: set[str], out: Path, provenance: dict[str, Any]) -> None:
    """Write the fine-tuned model: trained tensors in the base's dtype, frozen ones as byte copies of the base."""
    state = dict(model.state_dict())
    missing = sorted(n for n in trainable if n not in base)
    if missing:
        raise CheckpointError(
            f"trained parameter {missing[0]!r} has no tensor of that name in the base checkpoint: cannot write it"
        )
    specs = []
    for name in base.names():
        info = base.info(name)
        specs.append(TensorSpec(name, info.dtype, info.shape))
    with ShardedWriter(out, specs, donor=base.path, provenance=provenance, overwrite=True) as writer:
        for name in base.names():
            info = base.info(name)
            if name in trainable:
                writer.write(name, state[name].detach())
            else:
                writer.copy_raw(name, info)


def _lora_touched(peft_model: Any) -> set[str]:
    """Base tensor names that a LoRA adapter changes (``<module>.weight`` of each wrapped module)."""
    names = set()
    for mod_name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})):
            names.add(mod_name.removeprefix("base_model.model.") + ".weight")
    return names


def _write_loss(log_history: Sequence[dict[str, Any]], group_of_step, folder: Path) -> list[dict[str, Any]]:  # noqa: ANN001
    """``loss.csv`` and ``loss.png`` (one line per data group) from the Trainer's log history."""
    import pandas as pd

    rows = [
        {
            "step": h["step"],
            "group": group_of_step(h["step"]),
            "loss": h["loss"],
            "learning_rate": h.get("learning_rate"),
            "grad_norm": h.get("grad_norm"),
        }
        for h in log_history
        if "loss" in h and "step" in h
    ]
    frame = pd.DataFrame(rows, columns=["step", "group", "loss", "learning_rate", "grad_norm"])
    frame.to_csv(folder / "loss.csv", index=False)
    if rows:
        from layerswap.figures import pyplot

        plt = pyplot()

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for group, part in frame.groupby("group", sort=False):
            ax.plot(part["step"], part["loss"], marker="." if len(part) < 50 else None, label=str(group))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if frame["group"].nunique() > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "loss.png", dpi=120)
        plt.close(fig)
    return rows


def finetune(config: FinetuneConfig | dict[str, Any] | None = None, *, callbacks: Sequence[Any] = (), **kwargs: Any) -> Path:
    """Fine-tune ``config.base`` on ``config.data`` and write ``config.out``; return the output path.

    ``finetune(base=..., data="gsm8k", out=..., steps=40)`` works too (keywords build the config).
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests, monitoring).
    """
    from layerswap.config import validate_config

    if config is None:
        config = validate_config(FinetuneConfig, kwargs, source="finetune()")
    elif isinstance(config, dict):
        config = validate_config(FinetuneConfig, {**config, **kwargs}, source="finetune()")
    elif kwargs:
        config = validate_config(FinetuneConfig, {**config.model_dump(), **kwargs}, source="finetune()")
    cfg = config
    previous_quiet = is_quiet()
    if cfg.quiet:
        set_quiet(True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated.*")
            return _run(cfg, list(callbacks))
    finally:
        set_quiet(previous_quiet)


def _run(cfg: FinetuneConfig, extra_callbacks: list[Any]) -> Path:
    from layerswap.models import resolve_model

    # 1. Inputs and output checks: fail before any minute is spent training.
    mode = cfg.resolved_mode()
    named = cfg.named_data()
    base_path = resolve_model(cfg.base)
    base = ModelFolder(base_path)
    out = prepare_output_dir(Path(cfg.out).expanduser(), cfg.overwrite)
    work = Path(cfg.work_dir).expanduser() if cfg.work_dir else default_work_dir(out)
    if cfg.method == "full" and (cfg.lora_targets or cfg.merge_lora):
        raise ConfigError("--lora-targets/--merge-lora apply to --method lora")
    if mode == "simultaneous":
        if cfg.train_layers or cfg.freeze_layers:
            raise ConfigError(
                "mode simultaneous takes one --partition NAME=LAYERS per data set instead of --train-layers/--freeze-layers"
            )
        absent = [n for n in named if n not in cfg.partition]
        if absent:
            raise ConfigError(f"mode simultaneous: data set {absent[0]!r} has no --partition {absent[0]}=LAYERS (e.g. 0-5,16-17)")
        extra = [n for n in cfg.partition if n not in named]
        if extra:
            raise ConfigError(f"--partition {extra[0]!r} names no data set: data sets are {', '.join(named)}")
    elif cfg.partition:
        raise ConfigError("--partition applies to --mode simultaneous; use --train-layers for one partition")
    if cfg.ratio and mode != "simultaneous":
        raise ConfigError("--ratio applies to --mode simultaneous")
    bad_ratio = [n for n in cfg.ratio if n not in named]
    if bad_ratio:
        raise ConfigError(f"--ratio {bad_ratio[0]!r} names no data set: data sets are {', '.join(named)}")

    # Partitions from the base's names: a wrong layer index fails before anything loads.
    arch = base.architecture
    present = {r.module for r in map(arch.classify, base.names()) if r.layer is not None}
    if mode == "simultaneous":
        partitions = {
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
        overlap = set(partitions[first].layers).intersection(*[set(partitions[n].layers) for n in rest])
        if overlap:
            warnings.warn(f"partitions overlap in layers {sorted(overlap)}: those layers learn from every data set", stacklevel=2)
    else:
        one = resolve_partition(
            arch,
            present,
            train_layers=cfg.train_layers,
            freeze_layers=cfg.freeze_layers,
            train_modules=cfg.train_modules,
            # LoRA trains adapters only: no default global modules (an explicit choice is refused below)
            train_global=cfg.train_global if cfg.train_global is not None or cfg.method == "full" else ["none"],
        )
        partitions = {n: one for n in named}
    union = Partition(
        tuple(sorted({layer for p in partitions.values() for layer in p.layers})),
        None
        if any(p.modules is None for p in partitions.values())
        else tuple(sorted({m for p in partitions.values() for m in (p.modules or ())})),
        tuple(g for g in GLOBAL_MODULES if any(g in p.global_modules for p in partitions.values())),
    )

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    if cfg.quiet or is_quiet():
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    model_config = AutoConfig.from_pretrained(base_path)
    _check_seq_len(model_config, cfg.seq_len)
    resume_from = _prepare_work_dir(cfg, work, create=False)
    tok_src = Path(resolve_model(cfg.tokenizer)) if cfg.tokenizer else base_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    except (OSError, ValueError) as exc:
        raise InputPathError(f"no tokenizer in {tok_src}: pass --tokenizer PATH ({type(exc).__name__})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 2. Data.
    parts = _load_data(cfg, tokenizer, cfg.seq_len)
    names = [p.name for p in parts]
    if mode == "single":
        train_set: torch.utils.data.Dataset = parts[0]
    elif mode == "mix":
        train_set = torch.utils.data.ConcatDataset(parts)
    else:
        train_set = GroupedDataset(parts)

    # 3. Model, with only the partition trainable (or LoRA adapters on its layers).
    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if cfg.method == "full":
        counts = apply_partition(model, arch, union)
        group_params = [list(partition_parameters(model, arch, partitions[n]).values()) for n in names]
        trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
        lora_info: dict[str, Any] = {}
    else:
        from peft import LoraConfig, get_peft_model

        if union.global_modules:
            raise ConfigError("--train-global applies to full fine-tuning: LoRA trains adapters only")
        targets = lora_target_modules(present, union, cfg.lora_targets)
        lora_cfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            layers_to_transform=list(union.layers) if len(union.layers) < arch.num_layers else None,
            layers_pattern="layers" if len(union.layers) < arch.num_layers else None,
            use_rslora=cfg.use_rslora,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora_cfg)
        counts = {
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        }
        group_params = [
            [p for n, p in model.named_parameters() if p.requires_grad and arch.classify(n).layer in partitions[g].layers]
            for g in names
        ]
        trainable_names = set()
        lora_info = {
            "targets": targets,
            "r": cfg.lora_r,
            "alpha": cfg.lora_alpha,
            "dropout": cfg.lora_dropout,
            "use_rslora": cfg.use_rslora,
        }
    if cfg.gradient_checkpointing:
        model.config.use_cache = False

    # 4. Steps, schedule of groups, training arguments.
    if resume_from is None:
        _prepare_work_dir(cfg, work)  # every check passed: only now create OUT.work
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.batch_size * cfg.grad_accum * world
    schedule = ratio_schedule(names, cfg.ratio) if mode == "simultaneous" else [0]
    steps = cfg.steps
    if steps is None:
        epochs = cfg.epochs if cfg.epochs is not None else 1.0
        steps = max(1, math.ceil(epochs * len(train_set) / per_step))

    def group_of_step(step: int) -> str:
        if mode == "simultaneous":
            return names[schedule[(int(step) - 1) % len(schedule)]]
        return "+".join(names)

    bf16, fp16 = _precision(cfg.precision)
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate(),
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.log_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=fp16,
        **_checkpointing_args(TrainingArguments, cfg.gradient_checkpointing),
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=True if mode == "simultaneous" else None,
    )
    sampler = None
    if mode == "simultaneous":
        sampler = AlternatingBatchSampler(
            train_set,  # type: ignore[arg-type]
            schedule,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            steps=steps,
            num_processes=world,
            seed=cfg.seed,
        )
    meter = TokenMeter()
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=Collator(tokenizer.pad_token_id),
        groups=group_params if mode == "simultaneous" else None,
        batch_sampler=sampler,
        meter=meter,
        callbacks=[_callbacks(meter, work / "loss_running.csv", group_of_step, steps, cfg.keep_checkpoints), *extra_callbacks],
    )
    if trainer.is_world_process_zero() and trainer.callback_handler.callbacks:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)

    # 5. Train.
    started = time.perf_counter()
    resumed_step = 0
    if resume_from is not None:
        resumed_step = int(Path(resume_from).name.rsplit("-", 1)[-1])
    result = trainer.train(resume_from_checkpoint=resume_from)
    if mode == "simultaneous" and cfg.method == "full":
        apply_partition(model, arch, union)  # restore the union (the last step left one group active)
    runtime = time.perf_counter() - started
    if not trainer.is_world_process_zero():
        return out

    # 6. Output, atomically, with provenance.
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    step_times = meter.step_times[1:] or meter.step_times
    provenance: dict[str, Any] = {
        "kind": "finetune",
        "method": cfg.method,
        "mode": mode,
        "base": str(base_path),
        "num_layers": arch.num_layers,
        "partition": union.to_json(),
        "partitions": {n: partitions[n].to_json() for n in names},
        "data": {p.name: p.summary() for p in parts},
        "ratio": {names[g]: schedule.count(g) for g in sorted(set(schedule))} if mode == "simultaneous" else None,
        "hyperparameters": cfg.model_dump(mode="json"),
        "learning_rate": cfg.learning_rate(),
        "steps": int(trainer.state.global_step),
        "resumed_from_step": resumed_step,
        "examples_per_step": per_step,
        "final_loss": losses[-1] if losses else None,
        "train_seconds": round(runtime, 2),
        "seconds_per_step_median": round(statistics.median(step_times), 4) if step_times else None,
        "train_loss": getattr(result, "training_loss", None),
        **counts,
    }
    if lora_info:
        provenance["lora"] = lora_info
    with AtomicDir(out, overwrite=cfg.overwrite) as tmp:
        if cfg.method == "full":
            _write_full(model, base, trainable_names, tmp, provenance)
            if cfg.tokenizer or not (tmp / "tokenizer_config.json").exists():
                tokenizer.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            adapter_cfg = tmp / "adapter_config.json"
            data = json.loads(adapter_cfg.read_text())
            data["base_model_name_or_path"] = str(base_path)
            adapter_cfg.write_text(json.dumps(data, indent=2))
            tokenizer.save_pretrained(tmp)
            if cfg.merge_lora:
                touched = _lora_touched(model)
                merged = model.merge_and_unload()
                _write_full(merged, base, touched, tmp / "merged", {**provenance, "kind": "finetune-lora-merged"})
            write_provenance(tmp, provenance)
        _write_loss(trainer.state.log_history, group_of_step, tmp)
    if not cfg.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    return out
