"""``layerswap sweep``: merge-then-evaluate over candidate swaps and baselines."""

from __future__ import annotations

from pathlib import Path

import typer

from layerswap.cli import app


@app.command("sweep")
def sweep_command(
    config: Path = typer.Argument(..., help="Sweep YAML (base, math, lang, languages, tasks, candidates)."),
    out: Path = typer.Option(..., "--out", help="Output folder; rerunning with the same folder resumes."),
    limit: int | None = typer.Option(None, help="Override: examples per task and language."),
    save_best: bool | None = typer.Option(None, "--save-best/--no-save-best", help="Override: write the winner as a model folder."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Override: data folder laid out like ../shared/data."),
    search: str | None = typer.Option(None, "--search", help="Override candidates.search: exhaustive or halving (successive halving on the screen task)."),
) -> None:
    """Merge each candidate in memory, evaluate it, and write results.csv, figures and report.md."""
    from layerswap.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(config, {"limit": limit, "save_best": save_best, "data_dir": data_dir}, search=search)
    run_sweep(cfg, out, inputs=[config])
