"""The fine-tuning recipe, top to bottom: inputs -> model setup -> data -> train -> save.

Built on the Hugging Face ``Trainer`` so ``accelerate launch -m layerswap finetune ...`` runs the
same recipe with DDP, FSDP or DeepSpeed: every process checks the inputs and trains, only the main
one creates the work folder and writes the output, and the others wait for it (tested with two CPU
processes, ``tests/test_finetune_distributed.py``; see ``docs/scale-out.md``). Three modes:

- ``single``: one data set, one partition (``train_layers``/``freeze_layers``/``train_modules``).
- ``simultaneous``: several named data sets, each with its own partition (``partition``);
  optimizer steps alternate between the sets by ``ratio`` and each step updates only its set's
  partition (:mod:`layerswap.finetune.trainer`).
- ``mix``: the data-mixing baseline: all sets shuffled together, one partition.

The config (:class:`~layerswap.finetune.config.FinetuneConfig`) has already checked every rule
between options; what is left to check needs the checkpoint or the disk, and is checked before
any minute is spent training. The pieces: :mod:`~layerswap.finetune.model` (partitions,
tokenizer, model), :mod:`~layerswap.finetune.data` (tokenized data), :mod:`~layerswap.finetune.trainer`
(the loop), :mod:`~layerswap.finetune.workdir` (checkpoints, resume), :mod:`~layerswap.finetune.save`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerswap.finetune.config import FinetuneConfig
from layerswap.finetune.data import GroupedDataset, TokenizedData, load_dataset
from layerswap.finetune.freezing import apply_partition
from layerswap.finetune.memory import check_fits
from layerswap.finetune.model import check_seq_len, load_tokenizer, resolve_partitions, setup_model
from layerswap.finetune.save import save_output
from layerswap.finetune.trainer import build_trainer, plan_steps, precision_flags, training_arguments
from layerswap.finetune.workdir import (
    check_launch,
    check_log_dirs,
    check_work_dir,
    is_main_process,
    prepare_work_dir,
    remove_work_dir,
    step_of,
    work_dir_of,
)
from layerswap.io import ModelFolder, prepare_output_dir
from layerswap.io.lock import output_lock
from layerswap.io.model_folder import check_tokenizer_fits
from layerswap.progress import is_quiet, set_quiet


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
    if config.seeds > 1:
        from layerswap.errors import ConfigError

        raise ConfigError(f"seeds {config.seeds}: finetune() trains one run; call finetune_seeds() for several (the CLI does)")
    previous_quiet = is_quiet()
    if config.quiet or not is_main_process():
        set_quiet(True)  # under accelerate launch only the main process draws a progress bar
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*deprecated.*")
            return _run(config, list(callbacks))
    finally:
        set_quiet(previous_quiet)


def finetune_seeds(config: FinetuneConfig, *, callbacks: Sequence[Any] = ()) -> list[Path]:
    """Every run of ``config.seeds`` (:meth:`~layerswap.finetune.config.FinetuneConfig.seed_runs`),
    one after the other; returns their output paths in seed order."""
    return [finetune(run, callbacks=callbacks) for run in config.seed_runs()]


def _run(cfg: FinetuneConfig, extra_callbacks: list[Any]) -> Path:
    from layerswap.io import resolve_model

    # 1. Inputs, output and partitions: everything that can fail does so before anything loads
    #    (every process checks; none writes anything yet).
    check_launch(cfg)
    cfg.check_reporting()
    mode = cfg.resolved_mode()
    base_path = resolve_model(cfg.base)
    base = ModelFolder(base_path)
    inputs = [base_path, list(cfg.named_data().values()), cfg.data_dir, cfg.tokenizer]
    out = prepare_output_dir(Path(cfg.out).expanduser(), cfg.overwrite, inputs=inputs)
    work = work_dir_of(cfg, out)
    check_work_dir(work, out, inputs, resume=cfg.resume)
    check_log_dirs(cfg.report_to, inputs)
    # One run per output: a second run into the same --out or work folder is refused while this one
    # holds them (only the main process of an accelerate launch locks).
    held = output_lock({out: "--out", work: "--work-dir"}) if is_main_process() else contextlib.nullcontext()
    with held:
        arch = base.architecture
        present = {r.module for r in map(arch.classify, base.names()) if r.layer is not None}
        partitions = resolve_partitions(cfg, arch, present, mode)
        check_fits(base, partitions.union, cfg)  # its state in memory, before anything is loaded

        import transformers
        from transformers import AutoConfig

        if cfg.quiet or is_quiet():
            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
        check_seq_len(AutoConfig.from_pretrained(base_path), cfg.seq_len)
        resume_from = prepare_work_dir(cfg, work, create=False)
        precision = precision_flags(cfg.precision)
        tokenizer = load_tokenizer(cfg, base_path)

        # 2. Data, tokenized: one set, the shuffled union (mix), or groups that keep their origin.
        parts = _load_data(cfg, tokenizer)
        names = [p.name for p in parts]
        train_set: torch.utils.data.Dataset
        if mode == "single":
            train_set = parts[0]
        elif mode == "mix":
            train_set = torch.utils.data.ConcatDataset(parts)
        else:
            train_set = GroupedDataset(parts)

        # 3. Model, with only the partition trainable (or LoRA adapters on its layers).
        trainable = setup_model(cfg, base_path, arch, present, partitions, names)
        check_tokenizer_fits(tokenizer, trainable.model, cfg.tokenizer or base_path)

        # 4. Steps and the Trainer; only now, every check passed, is OUT.work created, by the main
        #    process. Starting the process group (main_process_first) waits for every process, so all
        #    have finished the checks of step 1 before the main one clears or creates the folder.
        plan = plan_steps(cfg, mode, names, len(train_set))
        args = training_arguments(cfg, work, plan, precision)
        main = is_main_process()
        with args.main_process_first(local=False, desc="work folder"):
            if resume_from is None:
                prepare_work_dir(cfg, work)  # a no-op but for the main process
        wandb_dir = os.environ.get("WANDB_DIR")
        if main and cfg.report_to == "wandb" and wandb_dir is None:
            os.environ["WANDB_DIR"] = str(work)  # W&B's local files in this run's work folder (restored below)
        running_log = work / "loss_running.csv" if main else Path(os.devnull)  # one writer of the running log
        trainer, meter = build_trainer(cfg, args, trainable, train_set, tokenizer.pad_token_id, plan, running_log, extra_callbacks)

        # 5. Train.
        started = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            if main and cfg.report_to == "wandb":
                _finish_wandb()  # flush the run's files before they are copied into the output
                if wandb_dir is None:
                    os.environ.pop("WANDB_DIR", None)  # a second run in this process gets its own folder
        if mode == "simultaneous" and cfg.method == "full":
            apply_partition(trainable.model, arch, partitions.union)  # restore the union (the last step left one group active)
        runtime = time.perf_counter() - started

        # 6. Output, atomically, with provenance: the main process writes it, the others wait for it.
        #    Under FSDP or DeepSpeed ZeRO-3 the weights are sharded: every process takes part in gathering them.
        sharded = bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))
        state = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
        if main:
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            step_times = meter.step_times[1:] or meter.step_times
            provenance: dict[str, Any] = {
                "kind": "finetune",
                "method": cfg.method,
                "mode": mode,
                "base": str(base_path),
                "num_layers": arch.num_layers,
                "partition": partitions.union.to_json(),
                "partitions": {n: partitions.by_data[n].to_json() for n in names},
                "data": {p.name: p.summary() for p in parts},
                "ratio": plan.ratio(),
                "hyperparameters": cfg.model_dump(mode="json"),
                "learning_rate": cfg.learning_rate(),
                "steps": int(trainer.state.global_step),
                "resumed_from_step": step_of(resume_from),
                "examples_per_step": plan.examples_per_step,
                "processes": plan.world,
                "final_loss": losses[-1] if losses else None,
                "train_seconds": round(runtime, 2),
                "seconds_per_step_median": round(statistics.median(step_times), 4) if step_times else None,
                "train_loss": getattr(result, "training_loss", None),
                **trainable.counts,
            }
            if trainable.lora:
                provenance["lora"] = trainable.lora
            save_output(
                cfg,
                out,
                trainable.model,
                tokenizer,
                base,
                trainable.trainable_names,
                provenance,
                trainer.state.log_history,
                plan.group_of_step,
                logs={"tensorboard": work / "runs", "wandb": work / "wandb"}.get(cfg.report_to),
                state=state,
            )
            if not cfg.keep_checkpoints:
                remove_work_dir(work)  # only if layerswap created it
        trainer.accelerator.wait_for_everyone()  # every process returns once the output is complete
        return out


def _finish_wandb() -> None:
    """End the active W&B run, if any (the Trainer leaves it open), so its local files are complete."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _load_data(cfg: FinetuneConfig, tokenizer: Any) -> list[TokenizedData]:
    return [
        load_dataset(spec, tokenizer, cfg.seq_len, name=name, data_dir=cfg.data_dir, chat_template=cfg.chat_template)
        for name, spec in cfg.named_data().items()
    ]
