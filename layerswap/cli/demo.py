"""``layerswap demo``: the whole pipeline on the embedded default model and real data.

Its options are generated from :class:`~layerswap.pipeline.config.DemoConfig` (:mod:`layerswap.cli.options`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from layerswap.cli import app
from layerswap.cli.options import command_from_config
from layerswap.pipeline.config import DemoConfig


@app.command("demo")
@command_from_config(DemoConfig)
def demo_command(
    config: DemoConfig,
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (a rerun resumes finished stages)."),
    quick: bool = typer.Option(
        False, "--quick", help="Tiny budgets: a smoke run of a few minutes (CI); options given still win."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Plan every stage, check every input and print a time and memory table; train and write nothing."
    ),
) -> None:
    """Prepare the model, fine-tune two experts, analyse, sweep, and report with figures."""
    if quick:  # shrink every budget the user did not set
        config = DemoConfig.quick_config(**{name: getattr(config, name) for name in config.model_fields_set})
    if dry_run:
        from layerswap.pipeline.plan import plan_demo

        text, _ = plan_demo(config, out)
        print(text, end="")
        return
    from layerswap.pipeline.run import run_demo

    run_demo(config, out)
