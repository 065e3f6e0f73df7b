"""Fine-tuning the experts: full and LoRA, layer/module freezing, simultaneous and mixed training.

``finetune(FinetuneConfig(...)) -> Path`` is the whole recipe, read top to bottom in
:mod:`layerswap.finetune.recipe`; the options and every rule between them are
:mod:`layerswap.finetune.config`, partitions :mod:`layerswap.finetune.freezing`, tokenized data
:mod:`layerswap.finetune.data` (specs and records are the core's :mod:`layerswap.io.records`).

Names resolve on first use, so importing the config (as the CLI does to build its options) does not
import torch.
"""

from layerswap.lazy import lazy_exports

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
__all__ = lazy_exports(__name__, _EXPORTS, call="finetune")
