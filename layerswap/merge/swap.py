"""Shortcuts for the two selection merges: layer swap and revert.

Both are plain configs run by :func:`layerswap.merge.write.merge`; they exist so a script can say
``swap(math=..., lang=..., bottom=5, top=2, out=...)`` without building a config by hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from layerswap.merge.config import merge_config, swap_config
from layerswap.merge.write import MergeResult, merge


def swap(
    *,
    math: str | os.PathLike[str],
    lang: str | os.PathLike[str],
    bottom: int,
    top: int,
    out: str | os.PathLike[str],
    transition: int = 0,
    base: str | os.PathLike[str] | None = None,
    non_layer: str | None = None,
    overwrite: bool = False,
    emit_mergekit: str | os.PathLike[str] | None = None,
) -> MergeResult:
    """Math expert in the middle, language expert in the bottom ``bottom`` and top ``top`` layers."""
    config = swap_config(
        math=str(math),
        lang=str(lang),
        bottom=bottom,
        top=top,
        transition=transition,
        base=str(base) if base is not None else None,
        non_layer=non_layer,
    )
    return merge(config, out, overwrite=overwrite, emit_mergekit=emit_mergekit)


def revert(
    *,
    base: str | os.PathLike[str],
    experts: Mapping[str, str | os.PathLike[str]],
    keep: Mapping[str, str | list[int]],
    out: str | os.PathLike[str],
    non_layer: str | None = None,
    overwrite: bool = False,
) -> MergeResult:
    """Each expert keeps its update only in ``keep[label]`` layers; everything else is the base."""
    config = merge_config(
        {
            "method": "revert",
            "base": str(base),
            "experts": {k: str(v) for k, v in experts.items()},
            "params": {"keep": dict(keep)},
            "non_layer": non_layer,
        }
    )
    return merge(config, out, overwrite=overwrite)
