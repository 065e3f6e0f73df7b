"""The ``layerswap`` command: a thin typer layer over the library.

Every user mistake surfaces as a :class:`~layerswap.errors.LayerswapError`; :func:`main` prints its
one-line message and exits with its code, never a traceback (``LAYERSWAP_DEBUG=1`` shows one).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence

import click
import typer

from layerswap.errors import LayerswapError

app = typer.Typer(
    name="layerswap",
    help="Cross-lingual skill transfer by modular fine-tuning and model merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each command group lives in its own module and registers itself on ``app`` when imported.
from layerswap.cli import analyze as _analyze  # noqa: E402,F401
from layerswap.cli import demo as _demo  # noqa: E402,F401
from layerswap.cli import evaluate as _evaluate  # noqa: E402,F401
from layerswap.cli import finetune as _finetune  # noqa: E402,F401
from layerswap.cli import inspect_cmd as _inspect  # noqa: E402,F401
from layerswap.cli import merge as _merge  # noqa: E402,F401
from layerswap.cli import models as _models  # noqa: E402,F401
from layerswap.cli import sweep as _sweep  # noqa: E402,F401


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:  # noqa: ANN001
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    debug = os.environ.get("LAYERSWAP_DEBUG", "") not in ("", "0")
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        result = app(args=list(argv) if argv is not None else None, prog_name="layerswap", standalone_mode=False)
    except LayerswapError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("interrupted: no partial output was kept", file=sys.stderr)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
