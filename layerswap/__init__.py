"""layerswap: cross-lingual skill transfer in LLMs by modular fine-tuning and model merging."""

from __future__ import annotations

__version__ = "0.1.0"

from layerswap.errors import LayerswapError  # noqa: E402

__all__ = ["LayerswapError", "__version__"]
