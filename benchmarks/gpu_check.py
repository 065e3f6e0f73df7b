"""A GPU check, ready to run on a CUDA machine with nothing to download (issue 19, part 4).

In one process, in well under 10 minutes on one modern GPU (about 3-4 minutes expected at the
defaults on an H100/H200; not yet measured: no GPU has been lent to a session):

1. builds a synthetic Llama-shaped model of about 1.1e9 parameters (``--size 1b``; ``3b`` is about
   3.0e9) directly on the GPU in bf16 (random init, ``transformers.LlamaConfig``), with a tiny
   tokenizer built locally (``layerswap.testing``), and saves it as the base;
2. times bf16 fine-tuning of the middle third of its layers through :func:`layerswap.finetune`
   (the recipe users run: Trainer, freezing, masked-head loss), full and LoRA, for ``--steps`` steps:
   seconds per step (median, first step dropped), tokens/s, peak GPU memory;
3. writes two planted experts (middle layers / outer layers perturbed on the GPU), loads the base
   onto the GPU once, and times the in-memory layer swap of several candidates into it
   (:class:`layerswap.merge.memory.TensorCache` + :func:`~layerswap.merge.memory.apply_merge`, as the
   sweep's ``InMemorySweep`` does), checking the swapped tensors equal the experts';
4. times a batched MGSM-style generation (``mgsm_native_cot_sw`` prompts, synthetic questions) on a
   tiny random-weight model through :func:`layerswap.evaluate.generation.run_generation_task`,
   batched against batch size 1;
5. runs ``pytest -m gpu`` (the tests marked ``gpu``; they skip without CUDA).

Each part is timed and reported on its own (a failing part is reported, the others still run).
Results go to a markdown file (default ``benchmarks/results/gpu_check.md``):

    python benchmarks/gpu_check.py                  # on a CUDA machine
    python benchmarks/gpu_check.py --size 3b        # the larger model
    python benchmarks/gpu_check.py --dry-run        # tiny sizes on the CPU (about a minute): checks the script itself

``--dry-run`` (= ``--device cpu --size tiny --steps 2 --skip-pytest``) writes to a temporary
folder unless ``--out`` is given, so it never replaces a GPU result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LAYERSWAP_QUIET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.md"

#: Llama-shaped sizes (untied embeddings, grouped-query attention with head_dim 128 where it applies).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=6, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512
    ),
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        intermediate_size=8192,
        num_attention_heads=16,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
    "3b": dict(
        hidden_size=3072,
        num_hidden_layers=28,
        intermediate_size=8192,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
}
WORDS = (
    "Juma ana machungwa manne na ndizi tatu . Leo ni siku nzuri sana kwa kusoma . Mama alinunua mikate "
    "sita sokoni , akala miwili . Ni ngapi zimebaki ? Jibu ni 4 . Watoto kumi walicheza mpira shuleni"
).split()


class Check:
    """Collects timed parts and their markdown."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.sections: list[tuple[str, str]] = []
        self.failed: list[str] = []

    def part(self, title: str, fn: Callable[[], str]) -> None:
        print(f"[gpu_check] {title} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            body = fn()
        except Exception as exc:  # noqa: BLE001 (a failing part is a result too; the others still run)
            import traceback

            self.failed.append(title)
            body = f"**FAILED**: `{type(exc).__name__}: {str(exc)[:500]}`\n\n```\n{traceback.format_exc()[-2500:]}\n```"
        seconds = time.perf_counter() - start
        self.sections.append((title, f"{body}\n\n(part wall time {seconds:.1f} s)"))
        print(f"[gpu_check] {title}: {seconds:.1f} s{' FAILED' if title in self.failed else ''}", file=sys.stderr, flush=True)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _peak_reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return _gib(torch.cuda.max_memory_allocated())
    return "n/a (CPU)"


def environment(device: str) -> str:
    import accelerate
    import peft
    import torch
    import transformers

    rows = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("transformers", transformers.__version__),
        ("peft", peft.__version__),
        ("accelerate", accelerate.__version__),
        ("device", device),
    ]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        rows += [
            ("GPU", props.name),
            ("GPU memory", _gib(props.total_memory)),
            ("CUDA", str(torch.version.cuda)),
            ("bf16 supported", str(torch.cuda.is_bf16_supported())),
        ]
    return "| what | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def build_base(size: str, device: str, dtype: Any, work: Path, state: dict[str, Any]) -> str:
    """The synthetic Llama on ``device`` (random init in ``dtype``), saved with a tiny local tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from layerswap.testing import make_tiny_tokenizer

    tok_dir = make_tiny_tokenizer(work / "tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    shape = SIZES[size]
    config = LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    check_sync(device)
    built = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    base = work / "base"
    t0 = time.perf_counter()
    model.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    saved = time.perf_counter() - t0
    state.update(base=base, model=model, config=config, params=params, tokenizer=tok_dir)
    count = f"{params / 1e9:.3f}e9" if params >= 1e8 else f"{params / 1e6:.2f}e6"
    return (
        f"Llama-shaped, {count} parameters ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
        f"MLP {shape['intermediate_size']}, vocab {shape['vocab_size']}, untied), random init in {str(dtype).removeprefix('torch.')} "
        f"on {device}: built in {built:.1f} s, saved in {saved:.1f} s."
    )


def check_sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _text_file(path: Path, tokens_wanted: int) -> Path:
    """Random sentences of Swahili-like words, enough for ``tokens_wanted`` tokens with the tiny tokenizer."""
    rng = random.Random(0)
    lines, words = [], 0
    while words < tokens_wanted // 2:  # the tiny BPE takes about 2+ tokens a word
        n = rng.randint(8, 24)
        lines.append(" ".join(rng.choice(WORDS) for _ in range(n)))
        words += n
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def finetune_part(method: str, args: argparse.Namespace, state: dict[str, Any]) -> str:
    from layerswap.finetune import FinetuneConfig, finetune
    from layerswap.io import read_provenance

    n = state["config"].num_hidden_layers
    layers = f"{n // 3}-{2 * n // 3 - 1}"
    data = _text_file(args.work / "text.txt", (args.steps + 1) * args.batch_size * args.seq_len + args.seq_len)
    out = args.work / f"ft-{method}"
    precision = "bf16" if args.device.startswith("cuda") else "fp32"
    _peak_reset(args.device)
    t0 = time.perf_counter()
    finetune(
        FinetuneConfig(
            base=str(state["base"]),
            data=[str(data)],
            out=str(out),
            method=method,
            train_layers=layers,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            precision=precision,
            gradient_checkpointing=args.gradient_checkpointing,
            save_steps=10_000,
            quiet=True,
        )
    )
    wall = time.perf_counter() - t0
    peak = _peak(args.device)
    prov = read_provenance(out)
    per_step = prov["seconds_per_step_median"]
    tokens = args.batch_size * args.seq_len
    row = (
        f"| {method} | {layers} | {prov['trainable_parameters'] / 1e6:.2f}M | {args.batch_size} x {args.seq_len} | {per_step:.3f} | "
        f"{tokens / per_step:,.0f} | {peak} | {prov['final_loss']:.3f} | {wall:.1f} |"
    )
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return "\n".join(
        [
            "| method | layers trained | trainable | batch x tokens | s/step (median) | tokens/s | peak memory | final loss | wall s (load + train + save) |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|",
            row,
        ]
    ) + (
        f"\n\n{precision} autocast (fp32 master weights), AdamW, {args.steps} steps, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}."
    )


def swap_part(args: argparse.Namespace, state: dict[str, Any]) -> str:
    """Planted experts written from the GPU model, then the in-memory swap into a loaded GPU model."""
    import torch

    from layerswap.evaluate.runner import load_model
    from layerswap.merge.config import merge_config
    from layerswap.merge.memory import TensorCache, apply_merge

    model, n = state["model"], state["config"].num_hidden_layers
    base = state["base"]
    experts: dict[str, Path] = {}
    t0 = time.perf_counter()
    for label, layers in (("math", range(n // 4, n - n // 4)), ("lang", [*range(n // 4), *range(n - n // 4, n)])):
        chosen = {i for i in layers}
        saved = {}
        gen = torch.Generator(device=model.device).manual_seed(len(label))
        with torch.no_grad():
            for name, p in model.named_parameters():
                parts = name.split(".")
                if "layers" in parts and int(parts[parts.index("layers") + 1]) in chosen:
                    saved[name] = p.detach().clone()
                    p.add_(
                        torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * 0.02 * float(p.float().std() or 1.0)
                    )
            experts[label] = args.work / label
            model.save_pretrained(experts[label], safe_serialization=True)
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
        del saved
    written = time.perf_counter() - t0
    del state["model"], model
    _peak_reset(args.device)

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    lm = load_model(str(base), device=args.device, dtype=str(dtype).removeprefix("torch."))
    check_sync(args.device)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache = TensorCache({k: str(v) for k, v in experts.items()}, str(base), dtype=dtype, device=args.device).preload()
    check_sync(args.device)
    cached = time.perf_counter() - t0
    rows = []
    last = None
    for bottom, top in dict.fromkeys(((n // 4, n // 8 or 1), (n // 4 + 1, n // 8 or 1), (n // 4 + 1, (n // 8 or 1) + 1), (2, 1))):
        cfg = merge_config(
            {
                "method": "layer_swap",
                "experts": {k: str(v) for k, v in experts.items()},
                "base": str(base),
                "params": {"bottom": bottom, "top": top},
            }
        )
        check_sync(args.device)
        t0 = time.perf_counter()
        stats = apply_merge(lm.model, cache, cfg)
        check_sync(args.device)
        rows.append(
            f"| bottom {bottom}, top {top} | {stats.copied} | {stats.skipped} | {(time.perf_counter() - t0) * 1000:.1f} |"
        )
        last = (bottom, top)
    # The swapped model holds the experts' tensors exactly: lang's in the outer layers, math's in the middle.
    params = dict(lm.model.named_parameters())
    bottom, top = last
    for layer, label in ((0, "lang"), (n - 1, "lang"), (n // 2, "math")):
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        if not torch.equal(params[name], cache.weight(label, name).to(params[name].dtype)):
            raise AssertionError(f"{name} after the swap is not the {label} expert's")
    peak = _peak(args.device)
    store = (
        "mapped store: read from the host page cache, only changed tensors copied to " + args.device
        if cache.store == "mapped"
        else "memory store: held on " + args.device
    )
    del lm, cache, params
    _peak_reset(args.device)
    return "\n".join(
        [
            f"Two planted experts written in {written:.1f} s; base loaded onto {args.device} in {loaded:.1f} s; "
            f"experts opened for the merge ({store}, {str(dtype).removeprefix('torch.')}) in {cached:.1f} s. Peak memory {peak}.",
            "",
            "| candidate (layer_swap) | tensors copied | unchanged (skipped) | ms |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "After the last swap, layers 0 and N-1 equal the language expert's and layer N/2 the math expert's (checked, bit for bit).",
        ]
    )


def generation_part(args: argparse.Namespace, state: dict[str, Any]) -> str:
    from layerswap.evaluate.generation import Example, run_generation_task
    from layerswap.evaluate.mgsm import make_task
    from layerswap.evaluate.runner import load_model
    from layerswap.testing import make_tiny_model

    tiny = make_tiny_model(args.work / "tiny-gen", "llama", layers=4, hidden=64, tokenizer=state["tokenizer"])
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    lm = load_model(str(tiny), device=args.device, dtype=dtype)
    task = make_task("sw", "native_cot", shots=0)
    examples = [
        Example(
            id=str(i), question=f"Juma ana machungwa {i} na ndizi {i + 3}. Ana matunda mangapi kwa jumla?", gold=str(2 * i + 3)
        )
        for i in range(args.gen_examples)
    ]
    rows = []
    for batch in (1, args.gen_batch):
        subset = examples if batch > 1 else examples[: max(1, args.gen_examples // 8)]
        check_sync(args.device)
        t0 = time.perf_counter()
        result = run_generation_task(lm, task, subset, batch_size=batch, max_new_tokens=args.gen_tokens)
        check_sync(args.device)
        seconds = time.perf_counter() - t0
        outputs = [r["output"] for r in result.records]
        new_tokens = sum(len(lm.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        rows.append(f"| {batch} | {len(subset)} | {seconds:.2f} | {len(subset) / seconds:.1f} | {new_tokens / seconds:,.0f} |")
    return "\n".join(
        [
            f"`mgsm_native_cot_sw` prompts on a tiny random-weight Llama (4 layers, hidden 64, {dtype}), greedy, "
            f"at most {args.gen_tokens} new tokens (random weights: the answers are noise; this times the batched path).",
            "",
            "| batch size | questions | seconds | questions/s | generated tokens/s |",
            "|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


def pytest_part(args: argparse.Namespace) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.pytest_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else "(no output)"
    if proc.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {summary}\n" + proc.stdout[-3000:])
    return f"`{' '.join(['python', *cmd[1:]])}` (exit {proc.returncode}): {summary}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda, refused if absent)")
    parser.add_argument("--size", choices=sorted(SIZES), default="1b", help="model size (default 1b = 1.1e9 parameters)")
    parser.add_argument("--steps", type=int, default=8, help="fine-tuning steps per method (default 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gen-examples", type=int, default=128)
    parser.add_argument("--gen-batch", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument("--pytest-timeout", type=int, default=300)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=None, help=f"markdown results (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, no pytest: checks the script")
    args = parser.parse_args(argv)

    import torch

    if args.dry_run:
        args.device, args.size, args.skip_pytest = "cpu", "tiny", True
        args.steps, args.batch_size, args.seq_len = min(args.steps, 2), 2, 64
        args.gen_examples, args.gen_batch, args.gen_tokens = 8, 4, 4
    if args.device == "auto":
        if not torch.cuda.is_available():
            print(
                "error: no CUDA device here: run this on a GPU machine, or --dry-run to check the script on the CPU",
                file=sys.stderr,
            )
            return 2
        args.device = "cuda"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but torch sees no CUDA device", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32

    scratch = tempfile.TemporaryDirectory(prefix="gpu_check-") if args.work is None else None
    args.work = Path(scratch.name) if scratch is not None else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or (args.work.parent / "gpu_check-dry-run.md" if args.dry_run else DEFAULT_OUT)
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    check = Check(args.device)
    state: dict[str, Any] = {}
    try:
        check.part("Environment", lambda: environment(args.device))
        check.part("Synthetic model on the device", lambda: build_base(args.size, args.device, dtype, args.work, state))
        if "base" in state:
            check.part("Fine-tuning: full, middle third of the layers", lambda: finetune_part("full", args, state))
            check.part("Fine-tuning: LoRA, middle third of the layers", lambda: finetune_part("lora", args, state))
            check.part("In-memory layer swap into the loaded model", lambda: swap_part(args, state))
        check.part("Batched MGSM-style generation (tiny random model)", lambda: generation_part(args, state))
        if not args.skip_pytest:
            check.part("Tests marked gpu", lambda: pytest_part(args))
    finally:
        state.clear()
        if scratch is not None:
            scratch.cleanup()
    total = time.perf_counter() - started
    verdict = "all parts passed" if not check.failed else f"FAILED parts: {', '.join(check.failed)}"
    head = [
        "# GPU check" + (" (dry run on the CPU, tiny sizes: checks the script, not a GPU)" if args.dry_run else ""),
        "",
        f"Command: `{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). "
        f"Total {total:.0f} s; {verdict}. Written by `benchmarks/gpu_check.py` (see its docstring for what each part does).",
    ]
    body = [f"## {title}\n\n{text}" for title, text in check.sections]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head) + "\n\n" + "\n\n".join(body) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "seconds": round(total, 1), "failed": check.failed}))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
