"""Merging experts: layer swap, revert, linear souping, task arithmetic, TIES and DARE.

On disk: :func:`merge` (a :class:`MergeConfig` to a folder). In memory, for the sweep:
:class:`TensorCache` + :func:`apply_merge` / :func:`merged_state_dict`.
"""

from layerswap.lazy import lazy_exports
from layerswap.merge.config import MergeConfig, load_merge_config, merge_config, swap_config
from layerswap.merge.methods import METHODS, get_method
from layerswap.merge.ops import Blend, Combine, MergePlan, Select
from layerswap.merge.plan import build_plan
from layerswap.merge.swap import revert, swap
from layerswap.merge.write import MergeResult, merge, open_merge

#: The in-memory merge needs torch at import; it loads on first use so that a selection-only merge
#: (``layerswap swap``), which copies bytes, never pays torch's ~2 s import.
_LAZY = lazy_exports(
    __name__,
    dict.fromkeys(("ApplyStats", "TensorCache", "apply_merge", "merged_state_dict"), "layerswap.merge.memory"),
    call="merge",
)

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
