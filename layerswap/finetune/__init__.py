"""Fine-tuning the experts: full and LoRA, layer/module freezing, simultaneous and mixed training.

``finetune(FinetuneConfig(...)) -> Path`` is the whole recipe (see :mod:`layerswap.finetune.train`);
data specs are in :mod:`layerswap.finetune.data`, partitions in :mod:`layerswap.finetune.freezing`.
"""

from __future__ import annotations

import sys
import types

from layerswap.finetune.data import Collator, TokenizedData, load_dataset, load_records, parse_spec, tokenize_records
from layerswap.finetune.freezing import Partition, apply_partition, resolve_partition
from layerswap.finetune.train import FinetuneConfig, finetune

__all__ = [
    "Collator",
    "FinetuneConfig",
    "Partition",
    "TokenizedData",
    "apply_partition",
    "finetune",
    "load_dataset",
    "load_records",
    "parse_spec",
    "resolve_partition",
    "tokenize_records",
]


class _CallableModule(types.ModuleType):
    """``layerswap.finetune`` is both this package and the function: ``layerswap.finetune(cfg)`` works.

    The package attribute ``layerswap.finetune`` is set to this module by the import system, so
    the module itself forwards calls to :func:`finetune`.
    """

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
