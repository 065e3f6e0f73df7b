"""Merging experts: layer swap, revert, linear souping, task arithmetic, TIES and DARE.

On disk: :func:`merge` (a :class:`MergeConfig` to a folder). In memory, for the sweep:
:class:`TensorCache` + :func:`apply_merge` / :func:`merged_state_dict`.
"""

import importlib
import sys
import types

from layerswap.merge.config import MergeConfig, load_merge_config, merge_config, swap_config
from layerswap.merge.methods import METHODS, get_method
from layerswap.merge.ops import Blend, Combine, MergePlan, Select
from layerswap.merge.plan import build_plan
from layerswap.merge.swap import revert, swap
from layerswap.merge.write import MergeResult, merge, open_merge

#: The in-memory merge needs torch at import; it loads on first use so that a selection-only merge
#: (``layerswap swap``), which copies bytes, never pays torch's ~2 s import.
_LAZY = {"ApplyStats", "TensorCache", "apply_merge", "merged_state_dict"}

__all__ = [
    "METHODS",
    "ApplyStats",
    "Blend",
    "Combine",
    "MergeConfig",
    "MergePlan",
    "MergeResult",
    "Select",
    "TensorCache",
    "apply_merge",
    "build_plan",
    "get_method",
    "load_merge_config",
    "merge",
    "merge_config",
    "merged_state_dict",
    "open_merge",
    "revert",
    "swap",
    "swap_config",
]


class _CallableModule(types.ModuleType):
    """``layerswap.merge`` is both this package and the function: ``layerswap.merge(config, out)`` works.

    The import system sets the package attribute ``layerswap.merge`` to this module, so the module
    forwards calls to :func:`merge` and loads the in-memory names on first use.
    """

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return merge(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        if name not in _LAZY:
            raise AttributeError(f"module 'layerswap.merge' has no attribute {name!r}")
        value = getattr(importlib.import_module("layerswap.merge.memory"), name)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(__all__))


sys.modules[__name__].__class__ = _CallableModule
