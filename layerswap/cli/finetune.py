"""``layerswap finetune``: a thin layer over :func:`layerswap.finetune.recipe.finetune`.

The options are generated from :class:`~layerswap.finetune.config.FinetuneConfig`
(:mod:`layerswap.cli.options`): flags and YAML keys share names (``--train-layers`` <->
``train_layers``), a new config field is a new flag, and flags given on the command line win over
``--config`` keys.
"""

from __future__ import annotations

from layerswap.cli import app
from layerswap.cli.options import command_from_config
from layerswap.finetune.config import FinetuneConfig


@app.command("finetune")
@command_from_config(FinetuneConfig, example="layerswap finetune --base gemma3-270m --data gsm8k --out experts/math")
def finetune_cmd(config: FinetuneConfig) -> None:
    """Fine-tune a model (full or LoRA) on chosen layers; simultaneous and mixed multi-data modes."""
    from layerswap.finetune.recipe import finetune_seeds
    from layerswap.finetune.workdir import is_main_process

    outs = finetune_seeds(config)
    if is_main_process():  # under accelerate launch, one line per run, not one per process
        print("\n".join(map(str, outs)))
