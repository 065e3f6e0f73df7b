"""layerswap: cross-lingual skill transfer in LLMs by modular fine-tuning and model merging."""

from __future__ import annotations

__version__ = "0.1.0"

from layerswap.errors import LayerswapError  # noqa: E402
from layerswap.lazy import lazy_exports  # noqa: E402

#: Names resolved on first use (``layerswap.finetune(...)``) so ``import layerswap`` stays light; the
#: packages ``finetune``, ``merge`` and ``evaluate`` are callable as their function.
__all__ = [
    "LayerswapError",
    "__version__",
    *lazy_exports(
        __name__,
        {
            "finetune": "layerswap.finetune:",
            "FinetuneConfig": "layerswap.finetune.config",
            "merge": "layerswap.merge:",
            "swap": "layerswap.merge.swap",
            "evaluate": "layerswap.evaluate:",
            "analyze": "layerswap.analysis",
            "importance": "layerswap.analysis",  # through the package: its module of the same name is not the function
            "run_demo": "layerswap.pipeline.run",
            "DemoConfig": "layerswap.pipeline.config",
        },
    ),
]
