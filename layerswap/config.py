"""Configs as pydantic models loaded from YAML, with one-line errors.

CLI flags and YAML keys carry the same names; unknown keys are errors (a typo must not be
silently ignored in an experiment that costs GPU hours).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from layerswap.errors import ConfigError, InputPathError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def describe_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    """The first problem of a pydantic error as one line that names the key and the fix."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        parent = model
        for part in err.get("loc", ())[:-1]:
            field = getattr(parent, "model_fields", {}).get(str(part))
            ann = getattr(field, "annotation", None) if field else None
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
        valid = ", ".join(getattr(parent, "model_fields", {}))
        return f"{source}: unknown key {loc!r}; valid keys here: {valid}"
    if kind == "missing":
        return f"{source}: missing required key {loc!r}"
    return f"{source}: {loc}: {err.get('msg', 'invalid value')}"


def validate_config(model: type[M], data: Mapping[str, Any], *, source: str = "config") -> M:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, model)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely (``yaml.safe_load``: no object construction)."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"config {path} does not exist: pass the path of a YAML file")
    if path.is_dir():
        raise InputPathError(f"config {path} is a folder: pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: pass a YAML file") from None
    if data is None:
        raise ConfigError(f"{path} is empty: see the README for an example config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of keys to values")
    return data


def load_config(model: type[M], path: str | Path, overrides: Mapping[str, Any] | None = None) -> M:
    """Load a YAML file into ``model``; ``overrides`` (non-None CLI flags) win over file keys."""
    data = read_yaml(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_config(model, data, source=str(path))


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
