"""``layerswap inspect``: what a model folder or LoRA adapter holds."""

from __future__ import annotations

import json

import typer

from layerswap.cli import app


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="Model folder, PEFT adapter folder, or embedded name (gemma3-270m)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Architecture, layers, parameters per layer and module kind, dtypes, tied embeddings."""
    from layerswap.io import describe, format_description, open_checkpoint

    info = describe(open_checkpoint(model))
    print(json.dumps(info, indent=2) if as_json else format_description(info))
