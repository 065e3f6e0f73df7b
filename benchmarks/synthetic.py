"""Write a synthetic base model and two experts of a chosen size, for speed and memory benchmarks.

The models are Llama-shaped (a real ``config.json`` that transformers reads, and a tiny tokenizer),
bf16, sharded like Hub checkpoints. The math expert's delta is planted in the middle layers and
the language expert's in the bottom and top layers; every other tensor gets a small noise delta
as a real fine-tune would. Tensors are generated and written one at a time, so a 3e9-parameter
triple needs little memory.

    python benchmarks/synthetic.py --params 1e9 --out /tmp/synth
    # -> /tmp/synth/{base,math,lang}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from layerswap.io import ShardedWriter, TensorSpec
from layerswap.progress import progress
from layerswap.testing import make_tiny_tokenizer


def llama_shape(params: float) -> dict:
    """A Llama config of about ``params`` parameters (hidden size by scale, layers to fill)."""
    hidden = 1024 if params < 4e8 else 2048 if params < 2e9 else 3072 if params < 5e9 else 4096
    inter = int(hidden * 2.75) // 256 * 256
    heads = hidden // 128
    kv = max(1, heads // 4)
    vocab = 32000
    per_layer = 2 * hidden * hidden + 2 * hidden * (kv * 128) + 3 * hidden * inter + 2 * hidden
    layers = max(4, round((params - 2 * vocab * hidden) / per_layer))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 128,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def tensor_specs(cfg: dict, dtype: str = "BF16") -> list[TensorSpec]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kvd = cfg["num_key_value_heads"] * cfg["head_dim"]
    qd = cfg["num_attention_heads"] * cfg["head_dim"]
    specs = [TensorSpec("model.embed_tokens.weight", dtype, (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", dtype, (h,)),
            TensorSpec(p + "self_attn.q_proj.weight", dtype, (qd, h)),
            TensorSpec(p + "self_attn.k_proj.weight", dtype, (kvd, h)),
            TensorSpec(p + "self_attn.v_proj.weight", dtype, (kvd, h)),
            TensorSpec(p + "self_attn.o_proj.weight", dtype, (h, qd)),
            TensorSpec(p + "post_attention_layernorm.weight", dtype, (h,)),
            TensorSpec(p + "mlp.gate_proj.weight", dtype, (i, h)),
            TensorSpec(p + "mlp.up_proj.weight", dtype, (i, h)),
            TensorSpec(p + "mlp.down_proj.weight", dtype, (h, i)),
        ]
    specs += [TensorSpec("model.norm.weight", dtype, (h,)), TensorSpec("lm_head.weight", dtype, (v, h))]
    return specs


def _base_tensor(spec: TensorSpec, gen: torch.Generator) -> torch.Tensor:
    if len(spec.shape) == 1:
        return torch.ones(spec.shape)
    return torch.randn(spec.shape, generator=gen).mul_(0.02)


def write_triple(
    out: Path,
    params: float = 1e9,
    *,
    max_shard_size: str = "1GB",
    lang_layers: tuple[int, int] = (3, 2),
    delta_scale: float = 0.05,
    noise_scale: float = 0.002,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``out/base``, ``out/math`` and ``out/lang``; returns their paths."""
    cfg = llama_shape(params)
    n = cfg["num_hidden_layers"]
    bottom, top = lang_layers
    lang_set = set(range(bottom)) | set(range(n - top, n))
    math_set = set(range(bottom + 1, n - top - 1))
    specs = tensor_specs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(out / ".tokenizer")
    (tok / "config.json").write_text(json.dumps(cfg, indent=2))
    paths = {name: out / name for name in ("base", "math", "lang")}
    writers = {
        name: ShardedWriter(
            path,
            specs,
            max_shard_size=max_shard_size,
            donor=tok,
            overwrite=True,
            provenance={"kind": "synthetic", "role": name, "params": params, "lang_layers": sorted(lang_set), "math_layers": sorted(math_set)},
        )
        for name, path in paths.items()
    }
    for w in writers.values():
        w.__enter__()
    gen = torch.Generator().manual_seed(seed)
    from layerswap.io import architecture_from_config

    arch = architecture_from_config(cfg)
    try:
        for spec in progress(specs, desc=f"synthetic {params:.0e}", unit="tensor"):
            base = _base_tensor(spec, gen)
            writers["base"].write(spec.name, base)
            layer = arch.classify(spec.name).layer
            for role, planted in (("math", math_set), ("lang", lang_set)):
                scale = delta_scale if layer in planted else noise_scale
                delta = torch.randn(spec.shape, generator=gen).mul_(scale * (0.02 if len(spec.shape) > 1 else 1.0))
                writers[role].write(spec.name, base + delta)
                del delta
            del base
    except BaseException as exc:
        for w in writers.values():
            w.__exit__(type(exc), exc, None)
        raise
    for w in writers.values():
        w.__exit__(None, None, None)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e9, help="approximate parameters per model (e.g. 1e9, 3e9)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--lang-bottom", type=int, default=3)
    parser.add_argument("--lang-top", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = write_triple(args.out, args.params, max_shard_size=args.max_shard_size, lang_layers=(args.lang_bottom, args.lang_top), seed=args.seed)
    cfg = json.loads((paths["base"] / "config.json").read_text())
    total = sum(math.prod(s.shape) for s in tensor_specs(cfg))
    print(f"wrote {', '.join(str(p) for p in paths.values())}: {total / 1e9:.2f}e9 parameters each, "
          f"{cfg['num_hidden_layers']} layers, in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
