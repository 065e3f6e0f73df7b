"""layerswap: cross-lingual skill transfer in LLMs by modular fine-tuning and model merging."""

from __future__ import annotations

__version__ = "0.1.0"

from layerswap.errors import LayerswapError  # noqa: E402

__all__ = ["LayerswapError", "__version__"]

#: Names resolved on first use (``layerswap.finetune(...)``) so ``import layerswap`` stays light.
_LAZY: dict[str, tuple[str, str | None]] = {
    "finetune": ("layerswap.finetune", None),  # the package is callable: layerswap.finetune(cfg)
    "FinetuneConfig": ("layerswap.finetune.config", "FinetuneConfig"),
    "merge": ("layerswap.merge", None),  # the package is callable: layerswap.merge(config, out)
    "swap": ("layerswap.merge.swap", "swap"),
    "evaluate": ("layerswap.evaluate", None),  # the package is callable: layerswap.evaluate(model, tasks, langs)
    "analyze": ("layerswap.analysis", "analyze"),
    "importance": ("layerswap.analysis.importance", "importance"),
}


def __getattr__(name: str):  # noqa: ANN202
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'layerswap' has no attribute {name!r}")

