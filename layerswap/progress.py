"""Progress bars for long work, silenced with ``LAYERSWAP_QUIET=1`` or :func:`set_quiet`."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_quiet: bool | None = None


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    if _quiet is not None:
        return _quiet
    return os.environ.get("LAYERSWAP_QUIET", "").lower() in ("1", "true", "yes")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it", **kwargs) -> Iterator[T]:
    """Wrap an iterable in a tqdm bar unless progress is silenced."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=is_quiet(), dynamic_ncols=True, **kwargs))


def bar(*, desc: str, total: int | None = None, unit: str = "it", **kwargs) -> tqdm:
    """A manual tqdm bar (``update``/``set_postfix``) unless progress is silenced."""
    return tqdm(desc=desc, total=total, unit=unit, disable=is_quiet(), dynamic_ncols=True, **kwargs)
