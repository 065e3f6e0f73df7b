"""The training loop: a Hugging Face ``Trainer`` that updates one partition per step, and its settings.

The Trainer computes the causal-LM loss with the output layer applied only at the positions that
carry a label (:mod:`layerswap.finetune.loss`), which on a large vocabulary is most of a step.

In simultaneous mode every optimizer step draws all its micro-batches from one data set
(:class:`~layerswap.finetune.data.AlternatingBatchSampler`) and only that set's partition has
``requires_grad`` during its backward, so the other partition gets no gradient (``None``) and
AdamW skips it entirely: no moment update, no weight decay, no step count. A callback draws the
progress bar and appends each logged loss to ``loss_running.csv`` as training goes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerswap.errors import ConfigError
from layerswap.finetune import state
from layerswap.finetune.config import FinetuneConfig, ratio_schedule
from layerswap.finetune.data import AlternatingBatchSampler, Collator
from layerswap.finetune.loss import enabled_by_env
from layerswap.finetune.model import TrainableModel
from layerswap.io import write_text_atomic
from layerswap.io.stored import read_stored_text
from layerswap.progress import bar


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps, and which data set each one trains on (``schedule`` cycles)."""

    mode: str
    names: list[str]
    steps: int
    examples_per_step: int
    world: int
    schedule: list[int]

    def group_of_step(self, step: int) -> str:
        """The data set a (1-based) optimizer step trained on; ``math+lang`` when they are mixed."""
        if self.mode == "simultaneous":
            return self.names[self.schedule[(int(step) - 1) % len(self.schedule)]]
        return "+".join(self.names)

    def ratio(self) -> dict[str, int] | None:
        """Steps per cycle of each data set (simultaneous mode), for the provenance."""
        if self.mode != "simultaneous":
            return None
        return {self.names[g]: self.schedule.count(g) for g in sorted(set(self.schedule))}


def plan_steps(cfg: FinetuneConfig, mode: str, names: list[str], examples: int) -> StepPlan:
    """``--steps``, else ``--epochs`` (default 1) over ``examples`` at the global batch size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.batch_size * cfg.grad_accum * world
    schedule = ratio_schedule(names, cfg.ratio) if mode == "simultaneous" else [0]
    steps = cfg.steps
    if steps is None:
        epochs = cfg.epochs if cfg.epochs is not None else 1.0
        steps = max(1, math.ceil(epochs * examples / per_step))
    return StepPlan(mode, names, steps, per_step, world, schedule)


class TokenMeter:
    """Counts real (non-pad) tokens trained on, for tokens/s."""

    def __init__(self) -> None:
        self.tokens = 0
        self.start = time.perf_counter()
        self.step_times: list[float] = []
        self._step_start: float | None = None

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), so bf16 autocast beats fp32.

    On such a CPU (here: an AMD EPYC with AVX512-BF16) a bf16 matrix product takes less than half the
    time of a float32 one; elsewhere bf16 is emulated and slower. ``benchmarks/results/finetune_gemma.md``.
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except (RuntimeError, AttributeError):  # a private probe that moved or cannot run here
            continue
    return False


def precision_flags(choice: str) -> tuple[bool, bool]:
    """``(bf16, fp16)`` for ``--precision``; ``auto`` is bf16 on a capable GPU, else fp32."""
    cuda = torch.cuda.is_available()
    if choice == "auto":
        return (cuda and torch.cuda.is_bf16_supported()), False
    if choice == "bf16":
        return True, False  # bf16 autocast on CPU: fast where cpu_bf16_is_fast(), slow (emulated) elsewhere
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


def training_arguments(cfg: FinetuneConfig, work: Path, plan: StepPlan, precision: tuple[bool, bool]) -> Any:
    """The ``TrainingArguments`` of the run: schedule, checkpoints into ``work``, ``report_to`` (logs under ``work``).

    Without a GPU (or other accelerator) the Trainer is told to use the CPU: under ``accelerate launch
    --multi_gpu``/``torchrun`` that makes the processes one gloo DDP group (accelerate forms a CPU group
    only when asked for the CPU), and it lets ``--precision bf16`` autocast on the CPU.
    """
    from transformers import TrainingArguments

    from layerswap.finetune.workdir import has_accelerator

    bf16, fp16 = precision
    return TrainingArguments(
        output_dir=str(work),
        max_steps=plan.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate(),
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        **({"optim": "adafactor"} if cfg.optim == "adafactor" else {}),  # else the Trainer's (fused) AdamW
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
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        use_cpu=not has_accelerator(),
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=True if plan.mode == "simultaneous" else None,
    )


def build_trainer(
    cfg: FinetuneConfig,
    args: Any,
    trainable: TrainableModel,
    train_set: torch.utils.data.Dataset,
    pad_token_id: int,
    plan: StepPlan,
    running_log: Path,
    extra_callbacks: Sequence[Any] = (),
) -> tuple[Any, TokenMeter]:
    """The Trainer, with the alternating sampler and partition switching in simultaneous mode."""
    simultaneous = plan.mode == "simultaneous"
    sampler = None
    if simultaneous:
        sampler = AlternatingBatchSampler(
            train_set,  # type: ignore[arg-type]
            plan.schedule,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            steps=plan.steps,
            num_processes=plan.world,
            seed=cfg.seed,
        )
    meter = TokenMeter()
    progress = _progress_callback(meter, running_log, plan.group_of_step, plan.steps, cfg.keep_checkpoints)
    trainer = _trainer_class()(
        model=trainable.model,
        args=args,
        train_dataset=train_set,
        data_collator=Collator(pad_token_id),
        groups=trainable.groups if simultaneous else None,
        batch_sampler=sampler,
        meter=meter,
        masked_head=enabled_by_env(),
        callbacks=[progress, *extra_callbacks],
    )
    if trainer.is_world_process_zero() and trainer.callback_handler.callbacks:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer, meter


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
            masked_head: bool = True,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.groups = groups
            self.alternating_sampler = batch_sampler
            self.meter = meter
            self.masked_head = masked_head
            self.masked_head_active = False
            self._active: int | None = None

        def train(self, *args: Any, **kwargs: Any):  # noqa: ANN201
            """Train with the loss computed at labelled positions only (:mod:`layerswap.finetune.loss`) where it applies."""
            from layerswap.finetune.loss import masked_head

            with masked_head(self.model, self.masked_head) as active:
                self.masked_head_active = active
                return super().train(*args, **kwargs)

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

        # -- checkpoint state without pickles (layerswap.finetune.state); sharded runs keep their own formats
        def _sharded(self) -> bool:
            return bool(self.is_deepspeed_enabled or self.is_fsdp_enabled)

        def _rng_stem(self) -> str:
            return state.rng_stem(self.args.process_index, self.args.world_size)

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            if self._sharded():
                return super()._save_optimizer_and_scheduler(output_dir)
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                state.save_optimizer(self.optimizer, Path(output_dir))
                state.save_json_state(self.lr_scheduler, Path(output_dir) / state.SCHEDULER)
            return None

        def _save_scaler(self, output_dir: str) -> None:
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None and self.args.should_save:
                state.save_json_state(scaler, Path(output_dir) / state.SCALER)

        def _save_rng_state(self, output_dir: str) -> None:
            from transformers.training_args import ParallelMode

            os.makedirs(output_dir, exist_ok=True)
            state.save_rng(Path(output_dir), self._rng_stem(), distributed=self.args.parallel_mode == ParallelMode.DISTRIBUTED)

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            if checkpoint is None or self._sharded():
                return super()._load_optimizer_and_scheduler(checkpoint)
            state.load_optimizer(self.optimizer, Path(checkpoint))
            state.load_json_state(self.lr_scheduler, Path(checkpoint) / state.SCHEDULER)
            return None

        def _load_scaler(self, checkpoint: str | None) -> None:
            scaler = getattr(self.accelerator, "scaler", None)
            if checkpoint is not None and scaler is not None and (Path(checkpoint) / state.SCALER).exists():
                state.load_json_state(scaler, Path(checkpoint) / state.SCALER)

        def _load_rng_state(self, checkpoint: str | None) -> None:
            if checkpoint is not None:
                state.load_rng(Path(checkpoint), self._rng_stem())

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


def _progress_callback(meter: TokenMeter, csv_path: Path, group_of_step, total_steps: int, keep_final: bool):  # noqa: ANN001
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
            if csv_path == Path(os.devnull):
                return  # not the main process: it keeps no log
            header = "step,group,loss,learning_rate,grad_norm,tokens_per_s"
            rows = []
            if os.path.lexists(csv_path):  # a resumed run: drop rows past the checkpoint (and any that are not rows)
                text = read_stored_text(csv_path, root=csv_path.parent, fix="delete it (it is only a log) and resume")
                rows = [r for r in text.splitlines()[1:] if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= state.global_step]
            write_text_atomic(csv_path, "\n".join([header, *rows]) + "\n")

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
