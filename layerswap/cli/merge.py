"""``layerswap merge CONFIG.yaml --out DIR`` and the ``swap`` shortcut: thin over :mod:`layerswap.merge`.

``merge``'s options that override the file's keys are generated from
:class:`~layerswap.merge.config.MergeConfig` (``--method``, ``--params density=0.3``, ...), ``swap``'s
from :class:`~layerswap.merge.config.SwapOptions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

from layerswap.cli import app
from layerswap.cli.options import command_from_config, command_with_overrides
from layerswap.merge.config import MergeConfig, SwapOptions


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def merge_help() -> str:
    """The ``merge`` help, read from the method registry: one line per registered method."""
    from layerswap.merge.methods import METHODS

    lines = [f"Merge experts as the config says: {', '.join(METHODS)}.", ""]
    lines += [f"{name}: {method.summary}\n" for name, method in METHODS.items()]
    return "\n".join(lines)


class _MergeCommand(TyperCommand):
    """Its help is read from the method registry when shown: a method registered later is listed
    too, and commands that show no help never import the merge package."""

    @property
    def help(self) -> str:  # type: ignore[override]
        return merge_help()

    @help.setter
    def help(self, value: str | None) -> None:
        """The docstring that click passes in is replaced by :func:`merge_help`."""


@app.command("merge", cls=_MergeCommand)
@command_with_overrides(MergeConfig)
def merge_cmd(
    overrides: dict[str, Any],
    config: Path = typer.Argument(
        ..., help="Merge config YAML (method, base, experts, params); see docs/merge.md. The options below override its keys."
    ),
    document: int | None = typer.Option(
        None, "--document", help="Which YAML document of CONFIG to merge (1, 2, ...) when it holds several separated by ---."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (a model folder, or a PEFT adapter for LoRA swaps)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    emit_mergekit: Path | None = typer.Option(None, "--emit-mergekit", help="Also write the equivalent mergekit YAML here."),
) -> None:
    """Merge experts as the config says (the help lists the registered methods: see merge_help)."""
    from layerswap.merge import load_merge_config, merge

    cfg = load_merge_config(str(config), overrides, document=document)
    result = merge(cfg, out, overwrite=overwrite, emit_mergekit=emit_mergekit, echo=_echo, inputs=[config])
    typer.echo(str(result.out))


SWAP_EXAMPLE = "layerswap swap --math experts/math --lang experts/sw --bottom 3 --top 2 --out merged/swap"


@app.command("swap")
@command_from_config(SwapOptions, example=SWAP_EXAMPLE, config_file=False)
def swap_cmd(
    options: SwapOptions,
    out: Path = typer.Option(..., "--out", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    emit_mergekit: Path | None = typer.Option(None, "--emit-mergekit", help="Also write the equivalent mergekit YAML here."),
) -> None:
    """Layer swap: the math expert with its bottom/top layers taken from the language expert."""
    from layerswap.merge import merge

    result = merge(options.merge_config(), out, overwrite=overwrite, emit_mergekit=emit_mergekit, echo=_echo)
    typer.echo(str(result.out))
