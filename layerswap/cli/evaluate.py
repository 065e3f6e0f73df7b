"""``layerswap evaluate``: any task of the registry (MGSM, GSM8K, FLORES, ...), thin over the library.

Its options are generated from :class:`~layerswap.evaluate.config.EvaluateConfig` (:mod:`layerswap.cli.options`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from layerswap.cli import app
from layerswap.cli.options import command_from_config
from layerswap.evaluate.config import SHOTS_HELP, TASK_HELP, EvaluateConfig  # light: specs only, no torch

__all__ = ["SHOTS_HELP", "TASK_HELP", "evaluate_cmd"]


@app.command("evaluate")
@command_from_config(EvaluateConfig)
def evaluate_cmd(
    config: EvaluateConfig,
    model: str = typer.Argument(..., help="Model folder, PEFT adapter folder (on its base), or short name (gemma3-270m)."),
    out: Path = typer.Option(..., "--out", help="Output folder: examples.jsonl, summary.csv, layerswap.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Evaluate a model; print the summary table and write per-example records."""
    from layerswap.evaluate.api import evaluate
    from layerswap.evaluate.result import format_summary

    settings = config.model_dump(exclude={"task", "langs", "format"})
    result = evaluate(model, config.task, config.langs, fmt=config.format, out=out, overwrite=overwrite, **settings)
    print(format_summary(result.summary))
    print(f"wrote {out}/examples.jsonl and {out}/summary.csv")
