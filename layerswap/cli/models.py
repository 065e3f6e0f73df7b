"""``layerswap models``: the embedded default model."""

from __future__ import annotations

import typer

from layerswap.cli import app
from layerswap.io import EMBEDDED, cache_dir, prepare_model

models_app = typer.Typer(help="Embedded models that need no Hub access.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def prepare(
    name: str = typer.Argument("gemma3-270m", help="Embedded model name."),
    force: bool = typer.Option(False, help="Convert again even if cached."),
) -> None:
    """Convert an embedded model once into the cache and print its folder."""
    print(prepare_model(name, force=force))


@models_app.command("list")
def list_models() -> None:
    """List the embedded models and the cache folder."""
    for model in EMBEDDED.values():
        prepared = (cache_dir() / "models" / model.name / "config.json").exists()
        print(f"{model.name:<16} {'prepared' if prepared else 'not prepared':<13} {model.description}")
    print(f"cache: {cache_dir()} (set LAYERSWAP_CACHE to move it)")
