"""Command-line options generated from a pydantic config: each option is written once, in the config.

Every field of the config becomes one option of the command. The flag is the field name in kebab
case (``train_layers`` -> ``--train-layers``, the YAML key spelled with ``-``), its help is the
field's ``description``, and its form follows the field's type:

==============================  =====================================================================
field type                      on the command line
==============================  =====================================================================
``str`` ``int`` ``float`` Path  ``--name VALUE`` (click checks numbers; ``json_schema_extra={"cli_alias":
                                "--other"}`` adds another name)
``Literal["a", "b"]``           ``--name VALUE``; another value -> ``--name 'x': use a or b``
``bool``                        ``--name/--no-name`` (``json_schema_extra={"cli_off": "--no-x"}``
                                renames the off switch)
``list[str]``                   repeatable ``--name VALUE``; with ``json_schema_extra={"cli_comma":
                                True}`` one comma-separated value instead (``--name a,b``)
``list[int]`` ``list[float]``  one comma-separated value (``--name 2,3,4``)
``int | str`` (scalars)         ``--name VALUE`` as text, read by the config
``dict[str, str | int | Any]``  repeatable ``--name KEY=VALUE`` (``Any``: the value read as YAML)
a nested config (a model)       one option per field of it, dotted: ``--candidates.halving.block 12``
==============================  =====================================================================

Options default to None, meaning "not given": the config's own default applies, and with
``--config FILE.yaml`` the file's value does (flags given win over file keys). A field of another
type is refused when the command is built, so a new field never silently lacks its option.

Use :func:`command_from_config` as a decorator under ``@app.command``: the command body receives
the validated config, then any options of its own (``--out``, an argument). :func:`flag_values`
is the lower level for a command that builds its config itself.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from layerswap.cli.common import parse_csv, parse_named
from layerswap.config import field_doc, load_config, validate_config
from layerswap.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
Kind = Literal["value", "switch", "repeat", "comma", "named"]
CONFIG_HELP = "YAML config; its keys are these flags with underscores."


@dataclass(frozen=True)
class Flag:
    """One config field as a command-line option."""

    field: str  # the config key, dotted for a nested one (``candidates.halving.block``)
    name: str  # ``--kebab-name`` (``--candidates.halving.block``)
    kind: Kind
    cli_type: Any  # what typer parses the option as
    help: str
    choices: tuple[str, ...] = ()  # a Literal's values
    item: type = str  # the value type of a KEY=VALUE map or a comma-separated list
    off: str | None = None  # a switch's off form
    alias: str | None = None  # another name of the option (``--lang`` beside ``--langs``)

    @property
    def param(self) -> str:
        """The command function's parameter name (a Python name: dots become ``__``)."""
        return self.field.replace(".", "__")

    def parameter(self) -> inspect.Parameter:
        """The keyword parameter typer reads: ``field: type | None = typer.Option(None, ...)``."""
        decl = f"{self.name}/{self.off or '--no-' + self.name[2:]}" if self.kind == "switch" else self.name
        option = typer.Option(None, decl, *([self.alias] if self.alias else []), help=self.help)
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[self.cli_type])  # noqa: UP045

    def value(self, given: Any) -> Any:
        """The config value of what was typed; None when the flag was not given."""
        if given is None:
            return None
        if self.kind == "repeat":
            return list(given) if given else None
        if self.kind == "comma":
            return self._comma(given)
        if self.kind == "named":
            return self._named(given) if given else None
        if self.choices and given not in self.choices:
            raise ConfigError(f"{self.name} {given!r}: use {_alternatives(self.choices)}")
        return given

    def _comma(self, given: str) -> list[Any]:
        values = parse_csv(given)
        try:
            return [self.item(v) for v in values]
        except ValueError:
            what = "whole numbers" if self.item is int else "numbers"
            raise ConfigError(f"{self.name} {given!r}: give comma-separated {what}, e.g. {self.name} 2,3") from None

    def _named(self, given: list[str]) -> dict[str, Any]:
        named = parse_named(given, option=self.name)
        if self.item is str:
            return named
        if self.item is Any:  # a value as YAML reads it: 0.5, true, [1, 2]
            return {key: _yaml_value(self.name, key, text) for key, text in named.items()}
        out: dict[str, Any] = {}
        for key, text in named.items():
            try:
                out[key] = self.item(text)
            except ValueError:
                what = "a whole number" if self.item is int else "a number"
                raise ConfigError(f"{self.name} {key}={text}: the count must be {what}") from None
        return out


def _yaml_value(option: str, key: str, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{option} {key}={text}: the value is not valid YAML (a number, true/false, a word or [a, b])") from None


def _alternatives(choices: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = tuple(a for a in get_args(annotation) if a is not type(None))
        return args[0] if len(args) == 1 else Union[args]  # noqa: UP007
    return annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (``CandidatesSpec``, ``GridSpec | None``), else None."""
    ann = _without_none(annotation)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def flag_of(model: type[BaseModel], field: str, info: FieldInfo, prefix: str = "") -> Flag:
    """How field ``field`` of ``model`` is written on the command line (see the module's table)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    help_text = field_doc(model, field)
    name = "--" + prefix + field.replace("_", "-")
    field = prefix.replace("-", "_") + field
    ann = _without_none(info.annotation)
    origin, args = get_origin(ann), get_args(ann)
    if ann is bool:
        return Flag(field, name, "switch", bool, help_text, off=extra.get("cli_off"))  # type: ignore[arg-type]
    if ann in (str, int, float, Path):
        return Flag(field, name, "value", ann, help_text, alias=extra.get("cli_alias"))  # type: ignore[arg-type]
    if origin in (Union, types.UnionType) and set(args) <= {str, int, float}:  # ``int | str``: the config reads the text
        return Flag(field, name, "value", str, help_text)
    if origin is Literal and all(isinstance(a, str) for a in args):
        return Flag(field, name, "value", str, help_text, choices=args)
    if origin is list and args == (str,):
        comma = bool(extra.get("cli_comma"))
        return Flag(field, name, "comma" if comma else "repeat", str if comma else list[str], help_text)
    if origin is list and args in ((int,), (float,)):
        return Flag(field, name, "comma", str, help_text, item=args[0])
    if origin is dict and args[:1] == (str,) and args[1] in (str, int, float, Any):
        return Flag(field, name, "named", list[str], help_text, item=args[1])
    raise TypeError(f"{model.__name__}.{field}: no command-line form for {info.annotation!r}; see layerswap.cli.options")


@functools.cache
def flags_of(model: type[BaseModel], prefix: str = "") -> tuple[Flag, ...]:
    """One :class:`Flag` per field of ``model``, in field order; a nested config's fields follow dotted."""
    flags: list[Flag] = []
    for field, info in model.model_fields.items():
        nested = _nested_model(info.annotation)
        if nested is not None:
            flags += flags_of(nested, f"{prefix}{field.replace('_', '-')}.")
        else:
            flags.append(flag_of(model, field, info, prefix))
    return tuple(flags)


def flag_values(model: type[BaseModel], given: Mapping[str, Any]) -> dict[str, Any]:
    """The typed options (keyed by parameter name) -> config values, nested at the dots; a flag not
    given is None (and a nested config with no flag given is left out)."""
    values: dict[str, Any] = {}
    for flag in flags_of(model):
        value = flag.value(given.get(flag.param))
        *parents, key = flag.field.split(".")
        if parents and value is None:
            continue
        at = values
        for part in parents:
            at = at.setdefault(part, {})
        at[key] = value
    return values


def config_from_flags(
    model: type[M],
    given: Mapping[str, Any],
    config_file: Path | None = None,
    *,
    example: str = "",
    fields: Collection[str] | None = None,
) -> M:
    """Validate the flags, merged over ``config_file`` when there is one (flags given win).

    Without a file, the required fields among ``fields`` (default all) must be given: the error names
    them all, followed by ``e.g. EXAMPLE`` when there is an example.
    """
    values = {k: v for k, v in flag_values(model, given).items() if fields is None or k in fields}
    if config_file is not None:
        return load_config(model, config_file, values)
    required = [flag for flag in flags_of(model) if flag.field in values and model.model_fields[flag.field].is_required()]
    missing = [flag.name for flag in required if not values[flag.field]]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}" + (f": e.g. {example}" if example else ""))
    return validate_config(model, {k: v for k, v in values.items() if v is not None}, source="command line")


def command_from_config(
    model: type[M],
    *,
    example: str = "",
    fields: Collection[str] | None = None,
    config_file: bool = True,
    config_help: str = CONFIG_HELP,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``run(config, **own)`` -> a typer command with one option per field of ``model``.

    ``fields`` limits the options to some fields (the rest come from the config file or the
    defaults); ``config_file`` adds ``--config FILE.yaml``. Parameters of ``run`` after the first
    (typer options or arguments of its own, e.g. ``--out``) stay options of the command and are
    passed through. ``example`` completes the error for missing required flags.
    """
    flags = [flag for flag in flags_of(model) if fields is None or flag.field.split(".")[0] in fields]
    if config_file and "config" in model.model_fields:
        raise TypeError(f"{model.__name__} has a field named config, which --config FILE.yaml needs")
    generated = [flag.parameter() for flag in flags]
    if config_file:
        option = typer.Option(None, "--config", help=config_help)
        generated.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[Path]))  # noqa: UP045

    def build(given: dict[str, Any]) -> M:
        path = given.pop("config", None) if config_file else None
        return config_from_flags(model, given, path, example=example, fields=fields)

    return _generated(model, generated, build)


def command_with_overrides(
    model: type[BaseModel], *, exclude: Collection[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a command that reads its config from a file argument of its own: ``run(overrides,
    **own)`` gets the fields given on the command line (nested at the dots, e.g. ``{"candidates":
    {"search": "halving"}}``) to lay over the file, one option per field of ``model`` but ``exclude``."""
    generated = [flag.parameter() for flag in flags_of(model) if flag.field.split(".")[0] not in exclude]

    def build(given: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in flag_values(model, given).items() if k not in exclude and v is not None}

    return _generated(model, generated, build)


def _generated(
    model: type[BaseModel], generated: list[inspect.Parameter], build: Callable[[dict[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``run(build(generated options), **own)`` as a typer command whose parameters are the generated
    options, then ``run``'s own after its first (typer options or arguments: ``--out``, a file)."""

    def decorate(run: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(run, eval_str=True).parameters.values())[1:]
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise TypeError(f"{run.__name__}: parameter {sorted(clash)[0]!r} is also a generated option of {model.__name__}")
        parameters = [*generated, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]

        def command(**given: Any) -> Any:
            passed = {p.name: given.pop(p.name) for p in own}
            return run(build(given), **passed)

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(command, attr, getattr(run, attr))
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate
