"""The ``layerswap`` command: a thin typer layer over the library.

Every user mistake surfaces as a :class:`~layerswap.errors.LayerswapError`; :func:`main` prints its
one-line message and exits with its code, never a traceback (``LAYERSWAP_DEBUG=1`` shows one).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Sequence

import typer

from layerswap.errors import ConfigError, LayerswapError

try:  # typer 0.2x carries its own copy of click, whose exceptions are not the standalone click's
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on the click package
    from click.exceptions import ClickException

app = typer.Typer(
    name="layerswap",
    help="Cross-lingual skill transfer by modular fine-tuning and model merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        from layerswap import __version__

        print(f"layerswap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Cross-lingual skill transfer by modular fine-tuning and model merging."""


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


def refuse_repeated_options(command: Any, argv: Sequence[str]) -> None:
    """A single-value option given twice is refused (click would silently keep the last one).

    ``evaluate --task proxy --task flores`` evaluates flores only in click; here it is an error that
    says to write ``--task proxy,flores``. Options meant to repeat (``--expert``, ``--data``) are fine.
    """
    args, i = list(argv), 0
    while isinstance(getattr(command, "commands", None), dict):  # a group: walk to the subcommand (``models prepare``)
        while i < len(args) and args[i].startswith("-"):
            i += 1
        if i >= len(args) or args[i] not in command.commands:
            return  # click reports a missing or unknown command
        command, i = command.commands[args[i]], i + 1
    options = [p for p in command.params if getattr(p, "param_type_name", "") == "option"]  # typer vendors click
    by_flag = {flag: p for p in options for flag in (*p.opts, *p.secondary_opts)}
    seen: dict[str, tuple[str, str | None]] = {}
    while i < len(args):
        token, i = args[i], i + 1
        if token == "--":
            break
        flag, eq, inline = token.partition("=")
        param = by_flag.get(flag) if token.startswith("--") else None
        if param is None:
            continue
        value: str | None = None
        if not param.is_flag and not param.count:
            if eq:
                value = inline
            elif i < len(args):
                value, i = args[i], i + 1
        if param.multiple or param.count:
            continue
        name = str(param.name)
        if name in seen:
            first_flag, first_value = seen[name]
            if value is None:
                if first_flag == flag:
                    raise ConfigError(f"{flag} is given twice: pass it once")
                raise ConfigError(f"{first_flag} and {flag} are both given and only the last would count: pass one of them")
            comma = "comma" in (param.help or "").lower()
            hint = f": it takes one comma-separated list, e.g. {flag} {first_value},{value}" if comma else ": give it once"
            raise ConfigError(f"{flag} is given twice ({first_value!r} and {value!r}) and only one would be used{hint}")
        seen[name] = (flag, value)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script."""
    debug = os.environ.get("LAYERSWAP_DEBUG", "") not in ("", "0")
    if not debug:
        warnings.formatwarning = _one_line_warning
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        refuse_repeated_options(typer.main.get_command(app), args)
        result = app(args=args, prog_name="layerswap", standalone_mode=False)
    except LayerswapError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:  # usage errors: unknown or missing options, bad values
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: its help, not an error
            exc.show()
        else:
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or "layerswap"
            print(f"error: {exc.format_message().rstrip('.')}: see {where} --help", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: no partial output was kept", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # the environment failed (full disk, too many open files) outside an atomic writer
        _exit_on_environment_error(exc, debug)
    try:
        sys.stdout.flush()  # standard output on a full device fails here, not at exit with a traceback
    except OSError as exc:
        _exit_on_environment_error(exc, debug, where="standard output")
    sys.exit(result if isinstance(result, int) else 0)


def _exit_on_environment_error(exc: OSError, debug: bool, where: str | None = None) -> None:
    from layerswap.errors import environment_error

    mapped = environment_error(exc, where)
    if mapped is None or debug:
        raise exc
    try:
        sys.stdout = open(os.devnull, "w")  # nothing more may reach the failed stream, not even at exit
    except OSError:
        pass
    print(f"error: {mapped}", file=sys.stderr)
    sys.exit(mapped.exit_code)
