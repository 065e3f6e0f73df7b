"""The demo's two experts: a math expert (GSM8K train, written as MGSM's English CoT answers) and a
language expert (NTREX text), fine-tuned from the same base with the demo's budgets.

With ``seeds: N`` each expert is trained N times, seed ``i`` into
:func:`~layerswap.finetune.config.seed_path` of its folder: ``experts/math`` and ``experts/lang`` for
seed 0 (so a one-seed demo folder is the first seed of an N-seed one), ``experts/math-s1`` ... after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from layerswap.io import resolve_data_dir
from layerswap.pipeline.config import DemoConfig
from layerswap.pipeline.stages import StageCost, stage

ROLES = ("math", "lang")


def expert_folders(out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Where a demo folder keeps the experts of ``seed``: ``out/experts/math`` and ``out/experts/lang``
    for seed 0, ``out/experts/math-s<seed>`` ... for the others."""
    from layerswap.finetune.config import seed_path

    return {role: Path(seed_path(str(Path(out) / "experts" / role), seed)) for role in ROLES}


def demo_experts(out: str | Path) -> dict[str, Path] | None:
    """The experts of an earlier demo run in ``out`` (both complete), else None: notebooks take these
    instead of training their own."""
    folders = expert_folders(out)
    return folders if all((f / "layerswap.json").exists() for f in folders.values()) else None


def train_experts(
    config: DemoConfig, out: str | Path, *, base: str | None = None, log: Callable[[str], None] = print, seed: int = 0
) -> tuple[dict[str, Path], dict[str, StageCost]]:
    """Fine-tune the demo's math (GSM8K train) and language (NTREX) experts of ``seed`` into
    ``out/experts`` (:func:`expert_folders`); the seed fixes their initialisation and data order.

    Each expert is skipped when its folder is complete, so notebooks can call this to get the
    demo's experts cheaply on a second run.
    """
    from layerswap.finetune import FinetuneConfig, finetune
    from layerswap.io import resolve_model

    base = base or str(resolve_model(config.base))
    data_dir = resolve_data_dir(config.data_dir)
    experts = expert_folders(out, seed)
    data = {"math": f"gsm8k?limit={config.steps * config.batch_size * 4}", "lang": f"ntrex:{config.language}"}
    common = dict(
        base=base,
        method=config.method,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        precision=training_precision(config.precision),
        data_dir=str(data_dir) if data_dir is not None else None,
        overwrite=True,
        quiet=False,
        save_steps=max(config.steps, 1),
        # A short warm-up: Adam's first full-size step on all 18 layers at once spikes the loss (seen at 1e-4).
        warmup_steps=max(config.steps // 6, 0),
        # Embeddings, final norm and LM head stay frozen (the paper's experts leave them to the
        # swap's non-layer policy; with a 262k vocabulary they are also most of the step time).
        train_global=["none"],
        seed=seed,
    )
    costs: dict[str, StageCost] = {}
    for role in ROLES:
        seq_len = config.math_seq_len if role == "math" else config.seq_len
        cfg = FinetuneConfig(data=[data[role]], out=str(experts[role]), seq_len=seq_len, **common)
        suffix = f"_s{seed}" if seed else ""
        costs[f"finetune_{role}{suffix}"] = stage(
            f"fine-tune {role} expert ({data[role]}{', seed ' + str(seed) if seed else ''})", experts[role], log, lambda cfg=cfg: finetune(cfg)
        )
    return experts, costs


def training_precision(choice: str) -> str:
    """``auto`` -> ``bf16`` on a CPU that multiplies bf16 natively (twice as fast as fp32 there), else
    fine-tuning's own ``auto`` (bf16 on a capable GPU, fp32 on other CPUs)."""
    import torch

    from layerswap.finetune.trainer import cpu_bf16_is_fast

    if choice == "auto" and not torch.cuda.is_available() and cpu_bf16_is_fast():
        return "bf16"
    return choice
