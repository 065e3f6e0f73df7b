"""Tiny random models, planted experts and LoRA adapters, for tests, benchmarks and docs.

Tests must not touch the network, so the tokenizer is a small byte-level BPE trained on a few
sentences in milliseconds, and models are built from configs (as mergekit's tests do).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Literal, Mapping

import torch

from layerswap.io import ModelFolder, write_tensors

Arch = Literal["llama", "qwen2", "gemma3", "mistral", "phi3"]

_CORPUS = [
    "Question: Janet has 3 apples and buys 2 more. How many apples does she have? Answer: 5",
    "Swali: Juma ana machungwa 4. Anapewa 3 zaidi. Ana machungwa mangapi? Jibu: 7",
    "The answer is 42. Jibu ni 42. উত্তর হল 42। సమాధానం 42.",
    "Step-by-Step Answer: 2 + 3 = 5. The quick brown fox jumps over the lazy dog 0123456789.",
    "Habari za asubuhi. Leo ni siku nzuri sana kwa kusoma hesabu na lugha.",
]


def make_tiny_tokenizer(out: str | Path, vocab_size: int = 384) -> Path:
    """Train a byte-level BPE on a few sentences and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(out)
    return out


def tiny_config(arch: Arch = "llama", *, vocab_size: int = 384, layers: int = 4, hidden: int = 32, tie: bool | None = None):
    """A transformers config of a tiny model of the named family."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=bool(tie))
    elif arch == "mistral":
        cfg = MistralConfig(**common, tie_word_embeddings=bool(tie))
    elif arch == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=bool(tie))
    elif arch == "phi3":
        cfg = Phi3Config(**common, tie_word_embeddings=bool(tie))
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(**common, head_dim=8, sliding_window=64, tie_word_embeddings=True if tie is None else tie)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    return cfg


def make_tiny_model(
    out: str | Path,
    arch: Arch = "llama",
    *,
    layers: int = 4,
    hidden: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: str | Path | None = None,
) -> Path:
    """Save a tiny random causal LM (with a tokenizer) as a Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    tok_dir = Path(tokenizer) if tokenizer is not None else make_tiny_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=len(tok), layers=layers, hidden=hidden))
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tok.save_pretrained(out)
    return out


def planted_expert(
    base: str | Path,
    out: str | Path,
    *,
    layers: Iterable[int],
    scale: float = 0.05,
    noise: float = 0.0,
    seed: int = 0,
    modules: Iterable[str] | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """An expert that differs from ``base`` by random deltas of relative size ``scale`` in ``layers``.

    ``noise`` adds a small delta of that relative size everywhere else, like a real fine-tune.
    """
    src = ModelFolder(base)
    arch = src.architecture
    chosen = set(layers)
    only = set(modules) if modules is not None else None
    gen = torch.Generator().manual_seed(seed)

    def tensors():
        for name in src.names():
            w = src.get(name)
            role = arch.classify(name)
            rel = noise
            if role.layer in chosen and (only is None or role.module in only):
                rel = scale
            if rel:
                wf = w.float()
                std = float(wf.std()) if wf.numel() > 1 else 1.0
                wf = wf + torch.randn(wf.shape, generator=gen) * rel * (std or 1.0)
                w = wf.to(w.dtype)
            yield name, w

    return write_tensors(out, tensors(), donor=base, max_shard_size=max_shard_size, provenance={"kind": "planted_expert", "layers": sorted(chosen), "scale": scale})


def make_lora_adapter(
    base: str | Path,
    out: str | Path,
    *,
    layers: Iterable[int] | None = None,
    target_modules: Iterable[str] = ("q_proj", "v_proj"),
    r: int = 4,
    alpha: float = 8.0,
    use_rslora: bool = False,
    seed: int = 0,
    modules_to_save: list[str] | None = None,
) -> Path:
    """A PEFT LoRA adapter on ``base`` with random (non-zero) A and B, saved with PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        layers_to_transform=sorted(layers) if layers is not None else None,
        use_rslora=use_rslora,
        modules_to_save=modules_to_save,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    if modules_to_save:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(torch.randn_like(p) * 0.01)
    peft_model.save_pretrained(out, safe_serialization=True)
    cfg_path = Path(out) / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return Path(out)


def state_dict_of(path: str | Path) -> Mapping[str, torch.Tensor]:
    """All tensors of a small model folder (tests only: loads everything)."""
    folder = ModelFolder(path)
    return dict(folder.iter_tensors())
