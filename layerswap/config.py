"""Configs as pydantic models loaded from YAML, with one-line errors.

CLI flags and YAML keys carry the same names; unknown keys are errors (a typo must not be
silently ignored in an experiment that costs GPU hours).
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from layerswap.errors import ConfigError, InputPathError

M = TypeVar("M", bound=BaseModel)
#: A name that becomes part of a file name (expert labels, data-set names): no separators, no ``..``.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")


def check_name(name: object, what: str, *, error: type[Exception] = ConfigError) -> str:
    """Refuse a name that cannot be a plain file name (``/``, ``\\``, ``..``, empty, odd characters)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise error(
            f"{what} {name!r} is not a plain name (it names output files): "
            "use letters, digits, '_', '-', '.' and '+', no '/' or '..', at most 64 characters"
        )
    return name


_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::(\d+))?")


def check_device(value: str | None, *, option: str = "--device") -> None:
    """Refuse a device name torch would not take (``gpu0``), or a GPU this machine does not have."""
    if value is None:
        return
    m = _DEVICE.fullmatch(str(value))
    if m is None:
        raise ConfigError(f"{option} {value!r} is not a device: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    if value.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(1) or 0)
        if index >= count:
            have = f"{count} CUDA device(s) are visible" if count else "no CUDA GPU is visible"
            raise ConfigError(f"{option} {value}: {have}: use {option} cpu or auto" + (f", or cuda:0..{count - 1}" if count else ""))
    elif value == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise ConfigError(f"{option} mps: Apple's MPS is not available here: use {option} cpu or auto")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # the keys written here; those merged in by ``<<`` may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # SafeLoader's own error says it (unhashable key)
        line = key_node.start_mark.line + 1
        if key in seen:
            where = f"on line {line}" if seen[key] == line else f"on lines {seen[key]} and {line}"
            raise _DuplicateKey(f"key {key!r} is given twice ({where})")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises on duplicate keys (a :class:`yaml.YAMLError`)."""
    loader = _UniqueKeyLoader(text)  # what yaml.load does, with a SafeLoader subclass (no yaml.load call to audit)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
    msg = str(err.get("msg", "invalid value"))
    return f"{source}: {loc}: {msg.removeprefix('Value error, ')}"


def validate_config(model: type[M], data: Mapping[str, Any], *, source: str = "config") -> M:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, model)) from None


def _one_document(path: Path, text: str, document: int | None) -> str:
    """The text of document ``document`` (1-based) of a file of several (``---``), or ``text`` itself.

    A file of several documents without ``document`` is refused with the option that picks one: a
    command reads one config, and silently taking the first would run something the user did not
    pick. The chosen document keeps its line numbers (errors name lines of the file).
    """
    try:
        raw = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return text  # the single-document reader reports where the syntax breaks
    docs = [node for node in raw if node is not None and node.tag != "tag:yaml.org,2002:null"]
    count = len(docs)
    if document is None and count > 1:
        raise ConfigError(f"{path} holds {count} YAML documents (separated by ---) and one config is read: pass --document N (1 to {count}) to choose one")
    if document is not None and not 1 <= document <= count:
        raise ConfigError(f"--document {document}: {path} holds {count} YAML document(s): pass 1 to {count}")
    if len(raw) <= 1:
        return text
    node = docs[(document or 1) - 1]
    start, end = node.start_mark, node.end_mark
    return "\n" * start.line + " " * start.column + text[start.index : end.index]


def read_yaml(path: str | Path, document: int | None = None) -> dict[str, Any]:
    """Read a YAML mapping safely (a ``yaml.SafeLoader``: no object construction; a key given twice is refused).

    ``document`` picks one document (1-based) of a file that holds several (``---``)."""
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"config {path} does not exist: pass the path of a YAML file")
    if path.is_dir():
        raise InputPathError(f"config {path} is a folder: pass the path of a YAML file")
    if not path.is_file():  # a FIFO or device would block or never end
        raise InputPathError(f"config {path} is not a regular file: pass the path of a YAML file")
    try:
        data = safe_load_unique(_one_document(path, path.read_text(encoding="utf-8"), document))
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}: keep one (YAML would silently use the last)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: pass a YAML file") from None
    except OSError as exc:
        raise InputPathError(f"cannot read config {path}: {exc.strerror or exc}: check the path and its permissions") from None
    if data is None:
        raise ConfigError(f"{path} is empty: see the README for an example config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of keys to values")
    return data


def merge_nested(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` with ``overrides`` laid over it: a mapping over a mapping merges key by key (so
    ``{"candidates": {"search": "halving"}}`` keeps the file's other ``candidates`` keys); None is "not given"."""
    out = dict(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_nested(out[key], value)
        else:
            out[key] = value
    return out


def load_config(model: type[M], path: str | Path, overrides: Mapping[str, Any] | None = None, *, document: int | None = None) -> M:
    """Load a YAML file (its ``document``-th document, when given) into ``model``; ``overrides``
    (non-None CLI flags, nested ones merged key by key) win over file keys."""
    source = str(path) if document is None else f"{path} (document {document})"
    return validate_config(model, merge_nested(read_yaml(path, document), overrides), source=source)


@functools.cache
def _doc_comments(model: type[BaseModel]) -> dict[str, str]:
    """The ``#:`` comments right above each field of ``model``'s class body (Sphinx's doc-comment form)."""
    try:
        lines = inspect.getsource(model).splitlines()[1:]
    except (OSError, TypeError):  # a model built at run time has no source
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        field = re.match(r"(\w+)\s*:", text)
        if field and pending:
            docs[field.group(1)] = " ".join(pending)
        pending = []
    return docs


def field_doc(model: type[BaseModel], field: str) -> str:
    """What a config field means: its ``description``, else the ``#:`` comment above it (inherited ones too)."""
    info = model.model_fields[field]
    if info.description:
        return info.description
    for cls in model.__mro__:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and field in _doc_comments(cls):
            return _doc_comments(cls)[field]
    return ""


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
