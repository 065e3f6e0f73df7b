"""Fine-tuning step time: freezing vs full, and our recipe vs a plain ``transformers.Trainer``.

Builds a Llama-shaped ~42M-parameter model (8 layers, hidden 512, vocab 16,384, untied), packs
random text into 4 x 128-token batches, and measures in one process, rounds interleaved so
machine load hits every variant alike:

- ``plain``: ``transformers.Trainer`` on the same model, data, collator and optimizer settings;
- ``full``: :func:`layerswap.finetune` with everything trainable;
- ``top/middle/bottom quarter``: 2 of 8 layers trainable, embeddings and head frozen;
- ``lora``: LoRA r=8 on all linear modules of every layer.

Median step time (first steps dropped as warm-up) and the Adam state actually allocated.
Writes ``benchmarks/results/finetune.md``.

    python benchmarks/bench_finetune.py [--steps 8 --rounds 3]

``--gemma`` measures instead the demo's experts on the real Gemma 3 270M (262k-token output layer)
at 4 x 128 tokens, old path against new path in one process, rounds interleaved: the standard loss
(``LAYERSWAP_MASKED_HEAD=0``: logits at every position) against the output layer at labelled
positions only, in float32 and with bf16 autocast, on the math data (GSM8K train as MGSM CoT
answers, prompt masked) and the language data (NTREX-sw, packed text). Writes
``benchmarks/results/finetune_gemma.md``.

    python benchmarks/bench_finetune.py --gemma --data-dir ../shared/data [--steps 4 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LAYERSWAP_QUIET", "1")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from layerswap.finetune import FinetuneConfig, finetune  # noqa: E402
from layerswap.finetune.data import Collator, load_dataset  # noqa: E402
from layerswap.testing import make_tiny_tokenizer  # noqa: E402

WARMUP = 2


class Timer(TrainerCallback):
    """Per-optimizer-step wall time and the optimizer state bytes at the end (same for both trainers)."""

    def __init__(self) -> None:
        self.times: list[float] = []  # CPU seconds of this process (robust on a shared machine)
        self.walls: list[float] = []
        self.t0 = 0.0
        self.w0 = 0.0
        self.state_bytes = 0

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
        self.t0 = time.process_time()
        self.w0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        self.times.append(time.process_time() - self.t0)
        self.walls.append(time.perf_counter() - self.w0)

    def on_train_end(self, args, state, control, optimizer=None, **kw):  # noqa: ANN001
        self.state_bytes = sum(
            t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t)
        )

    def median(self) -> float:
        return statistics.median(self.times[WARMUP:] or self.times)

    def wall_median(self) -> float:
        return statistics.median(self.walls[WARMUP:] or self.walls)


def build(root: Path) -> tuple[Path, Path]:
    base = root / "base"
    make_tiny_tokenizer(base)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=16384,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(base)
    rng = random.Random(0)
    words = [
        "habari",
        "asubuhi",
        "siku",
        "nzuri",
        "hesabu",
        "lugha",
        "jibu",
        "swali",
        "machungwa",
        "ndizi",
        "answer",
        "apples",
        "42",
        "7",
    ]
    text = root / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(200)) + "\n")
    return base, text


def run_ours(base: Path, text: Path, out: Path, steps: int, **kw) -> Timer:
    timer = Timer()
    settings = dict(steps=steps, batch_size=4, seq_len=128, lr=1e-4, save_steps=10_000, overwrite=True, quiet=True)
    settings.update(kw)
    finetune(FinetuneConfig(base=str(base), data=[str(text)], out=str(out), **settings), callbacks=[timer])
    return timer


def run_plain(base: Path, text: Path, work: Path, steps: int) -> Timer:
    """The same training with nothing of ours but the data preparation (tokenized outside the timing)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    data = load_dataset(str(text), tok, 128)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        seed=0,
    )
    timer = Timer()
    Trainer(model=model, args=args, train_dataset=data, data_collator=Collator(tok.pad_token_id), callbacks=[timer]).train()
    return timer


VARIANTS: dict[str, dict] = {
    "full (ours)": {},
    "top quarter 6-7": {"train_layers": "6-7"},
    "middle quarter 3-4": {"train_layers": "3-4"},
    "bottom quarter 0-1": {"train_layers": "0-1"},
    "lora r=8, all layers": {"method": "lora", "lr": 2e-4},
}


#: The demo's experts at 4 x 128 tokens: (data spec, masked head, precision).
GEMMA_VARIANTS: dict[str, tuple[str, bool, str]] = {
    "math, standard loss, fp32 (before)": ("math", False, "fp32"),
    "math, masked head, fp32": ("math", True, "fp32"),
    "math, masked head, bf16 autocast": ("math", True, "bf16"),
    "text, standard loss, fp32 (before)": ("text", False, "fp32"),
    "text, masked head, fp32": ("text", True, "fp32"),
    "text, masked head, bf16 autocast": ("text", True, "bf16"),
}


def _loss_column(out: Path) -> list[float]:
    rows = (out / "loss.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[2]) for r in rows]


def gemma_main(args: argparse.Namespace) -> None:
    """Old path against new path on Gemma 3 270M, the demo's settings (full, embeddings/head frozen)."""
    from transformers import AutoTokenizer

    from layerswap.io import resolve_model

    base = resolve_model("gemma3-270m")
    specs = {"math": "gsm8k?limit=64", "text": "ntrex:sw"}
    tok = AutoTokenizer.from_pretrained(base)
    per_step = {}
    for kind, spec in specs.items():  # real (non-pad) tokens of an average batch of 4: the tokens/s numerator
        data = load_dataset(spec, tok, 128, data_dir=args.data_dir)
        per_step[kind] = 4 * statistics.mean(len(e["input_ids"]) for e in data.examples)
    names = [n for n in GEMMA_VARIANTS if GEMMA_VARIANTS[n][0] in args.kinds]
    times: dict[str, list[float]] = {k: [] for k in names}
    walls: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                kind, masked, precision = GEMMA_VARIANTS[name]
                os.environ["LAYERSWAP_MASKED_HEAD"] = "1" if masked else "0"
                timer = Timer()
                config = FinetuneConfig(
                    base=str(base),
                    data=[specs[kind]],
                    out=str(Path(tmp) / "out"),
                    steps=args.steps,
                    batch_size=4,
                    seq_len=128,
                    data_dir=args.data_dir,
                    train_global=["none"],
                    precision=precision,
                    save_steps=10_000,
                    overwrite=True,
                    quiet=True,
                )
                out = finetune(config, callbacks=[timer])
                losses[name] = _loss_column(out)
                times[name].append(statistics.median(timer.times[1:] or timer.times))  # the first step dropped
                walls[name].append(statistics.median(timer.walls[1:] or timer.walls))
                print(
                    f"round {r + 1} {name:<40} {times[name][-1]:.2f} CPU s/step, {walls[name][-1]:.2f} wall s/step, losses {losses[name]}",
                    file=sys.stderr,
                    flush=True,
                )
    os.environ.pop("LAYERSWAP_MASKED_HEAD", None)
    med = {k: statistics.median(v) for k, v in times.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    lines = [
        "# Fine-tuning Gemma 3 270M: the output layer at labelled positions only",
        "",
        f"Command: `python benchmarks/bench_finetune.py --gemma --data-dir ../shared/data --steps {args.steps} --rounds {args.rounds} "
        f"--threads {args.threads} --kinds {','.join(args.kinds)}`",
        "",
        "The demo's experts: Gemma 3 270M (262,144-token vocabulary, tied embeddings), full fine-tuning of the 18 layers with "
        "embeddings, final norm and LM head frozen, batch 4 x 128 tokens, AdamW; `math` is GSM8K train as MGSM English CoT "
        "answers (loss on the answer only: about 40% of the positions carry a label), `text` is NTREX-sw packed into full "
        f"blocks (every position carries a label). {args.steps} steps per run (the first dropped), median over "
        f"{args.rounds} interleaved rounds of each run's median step, {args.threads} torch thread(s). The 2-core machine was "
        "shared with other jobs: ratios use the CPU time of the training process per step (`time.process_time`); wall time "
        "is shown too. Tokens per CPU second = real (non-pad) tokens of an average batch / CPU s per step.",
        "",
        "| variant | CPU s/step | tokens per CPU s | vs before | wall s/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        kind = GEMMA_VARIANTS[name][0]
        before = med[f"{kind}, standard loss, fp32 (before)"]
        lines.append(
            f"| {name} | {med[name]:.2f} | {per_step[kind] / med[name]:.1f} | {before / med[name]:.2f}x | {wall[name]:.2f} |"
        )
    lines.append("")
    for kind in args.kinds:
        old, new = losses[f"{kind}, standard loss, fp32 (before)"], losses[f"{kind}, masked head, fp32"]
        bf = losses[f"{kind}, masked head, bf16 autocast"]
        diff = max(abs(a - b) for a, b in zip(old, new, strict=True))
        rel = max(abs(a - b) / abs(a) for a, b in zip(old, bf, strict=True))
        lines.append(
            f"- {kind}: losses of the first {len(old)} steps, before: {', '.join(f'{x:.6f}' for x in old)}; masked head: "
            f"{', '.join(f'{x:.6f}' for x in new)} (largest difference {diff:.1e}); bf16 autocast: "
            f"{', '.join(f'{x:.4f}' for x in bf)} (largest relative difference {rel:.1e})."
        )
    lines += [
        "",
        "Per-round medians (CPU s/step): " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()),
        "",
    ]
    out_path = Path(args.out or Path(__file__).parent / "results" / "finetune_gemma.md")
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is then a clean work measure)")
    parser.add_argument(
        "--out", default=None, help="results file (default results/finetune.md, with --gemma results/finetune_gemma.md)"
    )
    parser.add_argument("--gemma", action="store_true", help="the demo's experts on Gemma 3 270M: old loss path against new")
    parser.add_argument("--data-dir", default=None, help="--gemma: the data folder (../shared/data)")
    parser.add_argument(
        "--kinds", default="math", help="--gemma: math, text or math,text (default math: the demo's slower expert)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gemma:
        args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        gemma_main(args)
        return
    args.out = args.out or str(Path(__file__).parent / "results" / "finetune.md")
    times: dict[str, list[float]] = {"plain Trainer": [], **{k: [] for k in VARIANTS}}
    walls: dict[str, list[float]] = {k: [] for k in times}
    state: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, text = build(root)
        params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(base).parameters())
        for r in range(args.rounds):
            order = ["plain Trainer", *VARIANTS]
            if r % 2:
                order.reverse()
            for name in order:
                if name == "plain Trainer":
                    timer = run_plain(base, text, root / "plain", args.steps)
                else:
                    kw = dict(VARIANTS[name])
                    timer = run_ours(base, text, root / "out", args.steps, **kw)
                times[name].append(timer.median())
                walls[name].append(timer.wall_median())
                state[name] = timer.state_bytes
                print(
                    f"round {r + 1} {name:<22} {timer.median():.3f} CPU s/step, {timer.wall_median():.3f} wall s/step",
                    file=sys.stderr,
                    flush=True,
                )
    med = {k: statistics.median(v) for k, v in times.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    full = med["full (ours)"]
    lines = [
        "# Fine-tuning step time",
        "",
        f"Command: `python benchmarks/bench_finetune.py --steps {args.steps} --rounds {args.rounds} --threads {args.threads}`",
        "",
        f"Llama-shaped model, {params / 1e6:.1f}M parameters (8 layers, hidden 512, vocab 16,384, untied), float32 on CPU "
        f"({args.threads} torch thread(s)), batch 4 x 128 tokens, AdamW, {args.steps} steps per run (first {WARMUP} dropped), "
        f"median over {args.rounds} interleaved rounds of each run's median step. The machine (2 cores) was shared with other "
        "jobs, so the ratios use the CPU time of the training process per step (`time.process_time`), which other jobs do "
        "not inflate; wall time is shown too.",
        "",
        "| variant | CPU s/step | vs full (ours) | wall s/step | Adam state MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in times:
        lines.append(f"| {name} | {med[name]:.3f} | {med[name] / full:.2f}x | {wall[name]:.3f} | {state[name] / 1e6:.1f} |")
    ratio_plain = full / med["plain Trainer"]
    lines += [
        "",
        f"- Our full fine-tuning step / plain `transformers.Trainer` step: **{ratio_plain:.3f}** (target within 10%).",
        f"- Top quarter trainable / full: **{med['top quarter 6-7'] / full:.2f}x**; middle quarter: "
        f"**{med['middle quarter 3-4'] / full:.2f}x**; bottom quarter: **{med['bottom quarter 0-1'] / full:.2f}x** (target <= 0.8x).",
        "- Frozen layers below the lowest trainable one get no backward at all (their inputs need no gradient), frozen "
        "layers above it skip their weight gradients, and AdamW holds state only for trainable tensors (the column above "
        "is measured from the optimizer after training).",
        "",
        "Per-round medians (CPU s/step): " + "; ".join(f"{k}: {', '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
