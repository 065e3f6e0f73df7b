"""``layerswap demo``: the whole pipeline on the embedded default model and real data."""

from __future__ import annotations

from pathlib import Path

import typer

from layerswap.cli import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (a rerun resumes finished stages)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Data folder laid out like ../shared/data (else $LAYERSWAP_DATA_DIR, ./shared/data, ../shared/data, or the Hub)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny budgets: a smoke run of a few minutes (CI)."),
    base: str | None = typer.Option(None, "--base", help="Base model folder or embedded name (default gemma3-270m)."),
    language: str | None = typer.Option(None, "--language", help="Target language code (default sw)."),
    method: str | None = typer.Option(None, "--method", help="full or lora fine-tuning of the experts."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps per expert."),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    seq_len: int | None = typer.Option(None, "--seq-len"),
    limit: int | None = typer.Option(None, "--limit", help="Examples per evaluation task in the sweep."),
    top_n: int | None = typer.Option(None, "--top-n", help="Recommended swap candidates to evaluate."),
    figures: str | None = typer.Option(None, "--figures", help="Also copy the headline figures into this folder (the repo's figures/)."),
) -> None:
    """Prepare the model, fine-tune two experts, analyse, sweep, and report with figures."""
    overrides = {
        "base": base,
        "data_dir": data_dir,
        "language": language,
        "method": method,
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "limit": limit,
        "top_n": top_n,
        "figures": figures,
    }
    from layerswap.config import validate_config
    from layerswap.sweep.demo import DemoConfig, run_demo

    if quick:
        config = DemoConfig.quick_config(**overrides)
    else:
        config = validate_config(DemoConfig, {k: v for k, v in overrides.items() if v is not None}, source="demo options")
    run_demo(config, out)
