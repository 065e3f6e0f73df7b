"""Write a synthetic base model and two experts of a chosen shape and delta profile, for speed and memory benchmarks.

The models are Llama-shaped (a real ``config.json`` that transformers reads, and a tiny tokenizer),
bf16, sharded like Hub checkpoints. Shapes: about ``--params`` parameters (hidden size by scale,
layers to fill: ``1.1e9`` is TinyLlama's shape), or ``--shape llama8b --depth N``: Llama-3.1-8B's
widths (hidden 4096, intermediate 14336, vocabulary 128256, 32/8 heads) at any depth. Delta profiles
(``--profile``), each expert computed in float32 and stored in bf16 like a real fine-tune:

- ``planted``: large deltas in the math expert's middle layers and the language expert's bottom and
  top layers, a small noise delta everywhere else (the friendly case for a streaming top-k);
- ``dense-uniform``: every weight moves by about the same amount, ``lr x sign`` (Adam's first
  steps), so after bf16 rounding most |deltas| share a few values: massive ties at any threshold;
- ``dense-varying``: Gaussian deltas whose scale varies log-normally by tensor (and is larger in
  each expert's own layers).

Tensors are generated and written one at a time, so a triple needs little memory.

    python benchmarks/synthetic.py --params 1e9 --out /tmp/synth
    python benchmarks/synthetic.py --shape llama8b --depth 4 --profile dense-uniform --out /work/synth/8b4-du
    # -> OUT/{base,math,lang}
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from layerswap.errors import LayerswapError
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


PROFILES = ("planted", "dense-uniform", "dense-varying")


def llama8b_shape(depth: int = 32) -> dict:
    """Llama-3.1-8B's widths (hidden 4096, intermediate 14336, vocabulary 128256, 32/8 heads) at ``depth`` layers."""
    cfg = llama_shape(8e9)
    cfg.update(intermediate_size=14336, vocab_size=128256, num_hidden_layers=depth, num_attention_heads=32,
               num_key_value_heads=8, rope_theta=500000.0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return cfg


def tiny_shape(depth: int = 4) -> dict:
    """A tiny Llama of the same layout (for tests of the benchmark's code paths)."""
    cfg = llama_shape(1e8)
    cfg.update(hidden_size=64, intermediate_size=160, vocab_size=256, num_hidden_layers=depth, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16)  # fmt: skip
    return cfg


def shape_bytes(cfg: dict) -> int:
    """Bytes of one bf16 model of this shape (tensor data only)."""
    return 2 * sum(math.prod(s.shape) for s in tensor_specs(cfg))


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


def _delta(profile: str, spec: TensorSpec, planted: bool, gen: torch.Generator, *, delta_scale: float, noise_scale: float) -> torch.Tensor:
    """One expert's float32 delta for one tensor (the module docstring describes the profiles)."""
    unit = 0.02 if len(spec.shape) > 1 else 1.0  # the base's own scale: matrices 0.02, norms 1
    if profile == "planted":
        return torch.randn(spec.shape, generator=gen).mul_((delta_scale if planted else noise_scale) * unit)
    if profile == "dense-uniform":
        lr = 0.01 * unit  # about 1.6 bf16 ulps of a typical weight: bf16 rounding leaves a few distinct |deltas|
        return torch.randn(spec.shape, generator=gen).sign_().mul_(lr)
    scale = 0.005 * math.exp(0.7 * float(torch.randn(1, generator=gen))) * (3.0 if planted else 1.0)
    return torch.randn(spec.shape, generator=gen).mul_(scale * unit)


def check_disk(out: Path, cfg: dict, copies: int = 3) -> None:
    """Refuse, before writing anything, when ``out``'s disk cannot hold ``copies`` models of this shape (5% spare)."""
    need = int(copies * shape_bytes(cfg) * 1.05)
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise LayerswapError(
            f"{probe} has {free / 1e9:.1f} GB free, the synthetic triple needs {need / 1e9:.1f} GB: free space or pick a smaller --depth/--params"
        )


def write_triple(
    out: Path,
    params: float = 1e9,
    *,
    cfg: dict | None = None,
    profile: str = "planted",
    max_shard_size: str = "1GB",
    lang_layers: tuple[int, int] = (3, 2),
    delta_scale: float = 0.05,
    noise_scale: float = 0.002,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``out/base``, ``out/math`` and ``out/lang`` (shape ``cfg``, or about ``params``); returns their paths.

    Each model is written atomically (a temporary sibling renamed at the end), after a disk-space check.
    """
    if profile not in PROFILES:
        raise LayerswapError(f"unknown delta profile {profile!r}: pick one of {', '.join(PROFILES)}")
    cfg = cfg or llama_shape(params)
    n = cfg["num_hidden_layers"]
    bottom, top = lang_layers
    lang_set = set(range(min(bottom, n))) | set(range(max(0, n - top), n))
    math_set = set(range(bottom + 1, n - top - 1)) or {n // 2}
    specs = tensor_specs(cfg)
    check_disk(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(out / ".tokenizer")
    (tok / "config.json").write_text(json.dumps(cfg, indent=2))
    paths = {name: out / name for name in ("base", "math", "lang")}
    total = sum(math.prod(s.shape) for s in specs)
    writers = {
        name: ShardedWriter(
            path,
            specs,
            max_shard_size=max_shard_size,
            donor=tok,
            overwrite=True,
            provenance={"kind": "synthetic", "role": name, "params": total, "profile": profile, "seed": seed,
                        "lang_layers": sorted(lang_set), "math_layers": sorted(math_set)},  # fmt: skip
        )
        for name, path in paths.items()
    }
    for w in writers.values():
        w.__enter__()
    gen = torch.Generator().manual_seed(seed)
    from layerswap.io import architecture_from_config

    arch = architecture_from_config(cfg)
    try:
        for spec in progress(specs, desc=f"synthetic {total:.2e} {profile}", unit="tensor"):
            base = _base_tensor(spec, gen)
            writers["base"].write(spec.name, base)
            layer = arch.classify(spec.name).layer
            for role, planted in (("math", math_set), ("lang", lang_set)):
                delta = _delta(profile, spec, layer in planted, gen, delta_scale=delta_scale, noise_scale=noise_scale)
                writers[role].write(spec.name, delta.add_(base))
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
    parser.add_argument("--shape", choices=["params", "llama8b"], default="params", help="llama8b: Llama-3.1-8B widths at --depth")
    parser.add_argument("--depth", type=int, default=4, help="layers of --shape llama8b")
    parser.add_argument("--profile", choices=PROFILES, default="planted")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--lang-bottom", type=int, default=3)
    parser.add_argument("--lang-top", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    cfg = llama8b_shape(args.depth) if args.shape == "llama8b" else llama_shape(args.params)
    try:
        paths = write_triple(args.out, cfg=cfg, profile=args.profile, max_shard_size=args.max_shard_size,
                             lang_layers=(args.lang_bottom, args.lang_top), seed=args.seed)  # fmt: skip
    except LayerswapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = json.loads((paths["base"] / "config.json").read_text())
    total = sum(math.prod(s.shape) for s in tensor_specs(cfg))
    print(f"wrote {', '.join(str(p) for p in paths.values())}: {total / 1e9:.2f}e9 parameters each, "
          f"{cfg['num_hidden_layers']} layers, in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
