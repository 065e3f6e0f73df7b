"""The activation lenses' cost against one plain forward pass over the same tokens (issue 29: goal <= 1.3x).

One model (the embedded Gemma 3 270M by default), loaded once; each round runs, one after the other
in alternating order, over the same batches of each task's data (GSM8K train, NTREX Swahili):

- **plain**: ``model(input_ids, attention_mask)`` under ``torch.inference_mode`` (logits for every token);
- **lenses**: the lenses' pass (``analysis/lenses/forward.py``) with the CKA, logit-lens and LAPE
  probes all reading it (LAPE's gate counts taken on the same tokens here, where ``run_lenses`` takes
  them on FLORES text), plus turning the kept rows into Gram matrices (``end_model``).

Reports medians of wall and CPU time (process time, all threads) and their ratios, and writes
``benchmarks/results/lenses.md``.

    python benchmarks/bench_lenses.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="gemma3-270m")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "lenses.md"))
    args = ap.parse_args()
    os.environ.setdefault("LAYERSWAP_QUIET", "1")

    from layerswap.analysis.importance import load_texts
    from layerswap.analysis.lenses.cka import CkaProbe
    from layerswap.analysis.lenses.forward import Pass, decoder_of, load_tokenizer, model_loader, tokenize
    from layerswap.analysis.lenses.lape import LapeProbe
    from layerswap.analysis.lenses.logit import LogitProbe
    from layerswap.analysis.lenses.run import DEFAULT_OPTIONS
    from layerswap.io import open_model

    class SameTokensLape(LapeProbe):
        """LAPE's gate counting on the benchmark's own tokens (``run_lenses`` reads FLORES instead)."""

        def wants(self, model: str, data: str) -> frozenset[str]:
            return frozenset({"gate"})

    base = open_model(args.base)
    tokenizer = load_tokenizer(base.path)
    texts = {"math": load_texts("gsm8k", data_dir=args.data_dir, limit=args.examples), "lang": load_texts("ntrex:sw", data_dir=args.data_dir, limit=args.examples)}
    sets = {
        name: tokenize(name, t, tokenizer, batch_size=args.batch_size, seq_len=args.seq_len, sample=DEFAULT_OPTIONS["cka_tokens"], logit=DEFAULT_OPTIONS["logit_tokens"], decodes=base.num_layers + 1)
        for name, t in texts.items()
    }
    tokens = sum(s.tokens for s in sets.values())
    model = model_loader(base, None, "cpu")()
    target = torch.zeros(len(tokenizer), dtype=torch.bool)

    def plain() -> None:
        with torch.inference_mode():
            for s in sets.values():
                for b in s.batches:
                    model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def lenses() -> None:
        probes = [CkaProbe(["m"], list(sets)), LogitProbe(["m"], list(sets), target), SameTokensLape({})]
        run = Pass(probes, sets)
        probes[1].forward = run
        run.decoders["m"] = decoder_of(model)
        for s in sets.values():
            run._run_one(model, "m", s, frozenset({"embed", "attn", "mlp", "residual", "gate"}))
        for p in probes:
            p.end_model("m")

    plain()  # warm-up (allocator, kernels)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "lenses": []}
    load = []
    for r in range(args.repeats):
        order = [("plain", plain), ("lenses", lenses)] if r % 2 == 0 else [("lenses", lenses), ("plain", plain)]
        for name, fn in order:
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1][0]:.1f} s wall / {t[-1][1]:.1f} s CPU" for n, t in times.items()), file=sys.stderr)
    med = {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}
    rounds_wall = [lw / pw for (pw, _), (lw, _) in zip(times["plain"], times["lenses"], strict=True)]
    rounds_cpu = [lc / pc for (_, pc), (_, lc) in zip(times["plain"], times["lenses"], strict=True)]
    cmd = "python benchmarks/bench_lenses.py " + " ".join(sys.argv[1:])
    lines = [
        "# Lenses: the activation pass against one plain forward pass (issue 29)",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Model `{args.base}` ({base.num_layers} layers), float32 on CPU, {torch.get_num_threads()} threads; {args.examples} examples of GSM8K train and of NTREX Swahili,",
        f"batches of {args.batch_size}, at most {args.seq_len} tokens each: {tokens} tokens per pass. Lens settings: the defaults of `run_lenses`",
        f"(CKA on {DEFAULT_OPTIONS['cka_tokens']} sampled tokens per data set, logit lens on {', '.join(str(sum(len(b.logit) for b in s.batches)) for s in sets.values())} positions (tokens // (layers + 1)) per data set decoded at every layer and",
        "the embeddings, LAPE's gate counts on every token). Contenders alternate within each round; load average during the rounds:",
        f"{', '.join(f'{x:.1f}' for x in load)} (2 cores shared with other jobs).",
        "",
        "| contender | wall s (median) | CPU s (median) |",
        "|---|---:|---:|",
        *(f"| {n} | {w:.2f} | {c:.2f} |" for n, (w, c) in med.items()),
        "",
        f"**Lenses / plain forward: {med['lenses'][0] / med['plain'][0]:.2f}x wall, {med['lenses'][1] / med['plain'][1]:.2f}x CPU** (medians; per round, wall: "
        + ", ".join(f"{x:.2f}" for x in rounds_wall)
        + "; CPU: "
        + ", ".join(f"{x:.2f}" for x in rounds_cpu)
        + f"; median of the per-round ratios: {statistics.median(rounds_wall):.2f}x wall, {statistics.median(rounds_cpu):.2f}x CPU). Goal <= 1.3x.",
        "",
        "The lenses' pass runs the backbone without the output layer and decodes only the logit lens's sampled positions",
        "(each through the final norm and the output layer, at every layer), which is where its extra cost lies on a model",
        "whose output layer is most of its compute (Gemma 3 270M: 262k-token vocabulary, 640-wide).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
