"""Small parsers shared by the CLI commands."""

from __future__ import annotations

from typing import Sequence

from layerswap.config import check_name
from layerswap.errors import ConfigError


def parse_named(values: Sequence[str], *, option: str) -> dict[str, str]:
    """``["math=path", "lang=path"]`` -> ``{"math": "path", "lang": "path"}``."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"{option} {value!r} must be NAME=VALUE, e.g. {option} math=./experts/math")
        check_name(name, f"{option} name")
        if name in named:
            raise ConfigError(f"{option} name {name!r} is given twice: use distinct names")
        named[name] = rest
    return named


def parse_csv(value: str | None, *, cast=str) -> list:  # noqa: ANN001
    """``"1,5"`` -> ``[1, 5]`` with ``cast``; None or empty -> ``[]``."""
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {value!r} as a comma-separated list") from None
