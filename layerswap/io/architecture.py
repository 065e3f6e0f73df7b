"""Tensor name -> (transformer layer, module kind), as data.

Every wing asks the same questions of a tensor name: which transformer layer holds it (or none:
embeddings, final norm, LM head) and what kind of module it is. The answers come from a small
registry of naming rules per ``model_type``; unknown architectures fall back to the generic
``layers.N.`` rule with a warning, which covers most decoder-only models on the Hub.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from layerswap.errors import CheckpointError, ConfigError

#: Module kinds of a transformer layer, in a display order (attention, then MLP, then norms).
LAYER_MODULE_ORDER: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "q_norm",
    "k_norm",
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
#: Module kinds outside the transformer layers.
GLOBAL_MODULES: tuple[str, ...] = ("embed_tokens", "norm", "lm_head")

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
_PARAM_SUFFIXES = ("weight", "bias")


@dataclass(frozen=True)
class TensorRole:
    """Where a tensor sits: ``layer`` (None outside the transformer layers) and ``module`` kind."""

    layer: int | None
    module: str
    param: str = "weight"


@dataclass(frozen=True)
class ArchitectureRule:
    """Naming facts of one model family. ``fused`` lists fused projections (Phi-3)."""

    model_types: tuple[str, ...]
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Tensor names (suffixes) of the global modules.
    embed: str = "embed_tokens"
    final_norm: str = "norm"
    lm_head: str = "lm_head"


REGISTRY: tuple[ArchitectureRule, ...] = (
    ArchitectureRule(("llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2", "granite")),
    ArchitectureRule(("gemma", "gemma2", "gemma3", "gemma3_text")),
    ArchitectureRule(
        ("phi3",),
        fused={"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")},
    ),
)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs (Gemma 3 4B+) keep the decoder facts in ``text_config``."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text and "num_hidden_layers" not in config:
        return text
    return config


@dataclass(frozen=True)
class Architecture:
    """The naming rules of one model, resolved from its ``config.json``."""

    model_type: str
    num_layers: int
    tied_embeddings: bool
    rule: ArchitectureRule | None

    @property
    def known(self) -> bool:
        return self.rule is not None

    @property
    def fused(self) -> Mapping[str, tuple[str, ...]]:
        return self.rule.fused if self.rule else {}

    def classify(self, name: str) -> TensorRole:
        """Return the layer and module kind of a tensor name (base-model naming)."""
        parts = name.split(".")
        param = parts[-1] if parts[-1] in _PARAM_SUFFIXES else "weight"
        stem = parts[:-1] if parts[-1] in _PARAM_SUFFIXES else parts
        match = _LAYER_RE.search(".".join(stem) + ".")
        if match:
            layer = int(match.group(1))
            inner = [p for p in match.group(2).split(".") if p]
            module = inner[-1] if inner else "layer"
            return TensorRole(layer, module, param)
        last = stem[-1] if stem else name
        if last in ("embed_tokens", "wte", "embed_in", "tok_embeddings"):
            return TensorRole(None, "embed_tokens", param)
        if last in ("lm_head", "embed_out", "output"):
            return TensorRole(None, "lm_head", param)
        if last in ("norm", "final_layernorm", "ln_f", "final_norm"):
            return TensorRole(None, "norm", param)
        return TensorRole(None, last, param)

def rule_for(model_type: str) -> ArchitectureRule | None:
    for rule in REGISTRY:
        if model_type in rule.model_types:
            return rule
    return None


def architecture_from_config(config: Mapping[str, Any], *, source: str = "config.json") -> Architecture:
    """Resolve the architecture of a model from its parsed ``config.json``."""
    text = _text_config(config)
    model_type = str(config.get("model_type") or text.get("model_type") or "unknown")
    n_layers = text.get("num_hidden_layers", config.get("num_hidden_layers"))
    if not isinstance(n_layers, int) or n_layers <= 0:
        raise CheckpointError(
            f"{source} has no positive integer num_hidden_layers: is this a decoder-only causal LM config?"
        )
    tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    if tied is None:
        # transformers' PretrainedConfig default is True; Gemma models always tie.
        tied = True
    rule = rule_for(model_type)
    if rule is None:
        warnings.warn(
            f"unknown architecture {model_type!r} in {source}: using the generic 'layers.N.' naming rule",
            stacklevel=2,
        )
    return Architecture(model_type=model_type, num_layers=int(n_layers), tied_embeddings=bool(tied), rule=rule)


def module_sort_key(module: str) -> tuple[int, str]:
    """Order module kinds for tables and heatmaps: known kinds first, in LAYER_MODULE_ORDER."""
    order = LAYER_MODULE_ORDER + GLOBAL_MODULES
    return (order.index(module), module) if module in order else (len(order), module)


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """Parse ``"0-4,16-17"`` (also negative indices from the end: ``-2--1``) into sorted layers."""
    layers: set[int] = set()
    for chunk in str(spec).replace(" ", "").split(","):
        if not chunk:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", chunk)
        if not m:
            raise ConfigError(
                f"cannot read layer range {chunk!r}: use comma-separated indices or ranges like '0-4,16-17'"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        lo = lo + num_layers if lo < 0 else lo
        hi = hi + num_layers if hi < 0 else hi
        for value in (lo, hi):
            if not 0 <= value < num_layers:
                raise ConfigError(
                    f"layer {value} in {spec!r} is out of range: valid layers are 0..{num_layers - 1}"
                )
        if hi < lo:
            raise ConfigError(f"layer range {chunk!r} runs backwards: write it low-high")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


def generic_architecture(num_layers: int = 0, model_type: str = "generic") -> Architecture:
    """The generic ``layers.N.`` rule without a config (a LoRA adapter's own naming), no warning."""
    return Architecture(model_type=model_type, num_layers=num_layers, tied_embeddings=False, rule=None)
