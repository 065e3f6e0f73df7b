"""``layerswap sweep``: merge-then-evaluate over candidate swaps and baselines.

Every key of the sweep YAML is also an option that overrides it, generated from
:class:`~layerswap.sweep.config.SweepConfig` (:mod:`layerswap.cli.options`): ``--limit 20``,
``--candidates.search halving``, ``--candidates.halving.block 12``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from layerswap.cli import app
from layerswap.cli.options import command_with_overrides
from layerswap.sweep.config import SweepConfig


@app.command("sweep")
@command_with_overrides(SweepConfig)
def sweep_command(
    overrides: dict[str, Any],
    config: Path = typer.Argument(
        ..., help="Sweep YAML (base, math, lang, languages, tasks, candidates); the options below override its keys."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder; rerunning with the same folder resumes."),
) -> None:
    """Merge each candidate in memory, evaluate it, and write results.csv, figures and report.md."""
    from layerswap.sweep import load_sweep_config, run_sweep

    run_sweep(load_sweep_config(config, overrides), out, inputs=[config])
