"""Fine-tuning the experts: full and LoRA, layer/module freezing, simultaneous and mixed training.

``finetune(FinetuneConfig(...)) -> Path`` is the whole recipe, read top to bottom in
:mod:`layerswap.finetune.recipe`; the options and every rule between them are
:mod:`layerswap.finetune.config`, partitions :mod:`layerswap.finetune.freezing`, tokenized data
:mod:`layerswap.finetune.data` (specs and records are the core's :mod:`layerswap.io.records`).

Names resolve on first use, so importing the config (as the CLI does to build its options) does not
import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

#: name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Collator": "layerswap.finetune.data",
    "FinetuneConfig": "layerswap.finetune.config",
    "Partition": "layerswap.finetune.freezing",
    "TokenizedData": "layerswap.finetune.data",
    "apply_partition": "layerswap.finetune.freezing",
    "finetune": "layerswap.finetune.recipe",
    "load_dataset": "layerswap.finetune.data",
    "load_records": "layerswap.io.records",
    "parse_spec": "layerswap.io.records",
    "resolve_partition": "layerswap.finetune.freezing",
    "tokenize_records": "layerswap.finetune.data",
}
__all__ = sorted(_EXPORTS)


class _CallableModule(types.ModuleType):
    """``layerswap.finetune`` is both this package and the function: ``layerswap.finetune(cfg)`` works.

    The package attribute ``layerswap.finetune`` is set to this module by the import system, so
    the module itself forwards calls to :func:`~layerswap.finetune.recipe.finetune`.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return importlib.import_module("layerswap.finetune.recipe").finetune(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _CallableModule
