"""Merge methods on one real pair: parity with mergekit, and what the data-aware merges cost.

Parity: each deterministic method mergekit has runs on a real pair (default: the demo's Gemma 3 270M
experts, full fine-tunes on GSM8K and NTREX Swahili) with layerswap and with ``mergekit-yaml`` on the
YAML that ``--emit-mergekit`` writes (``bench_merge.BENCH_PARAMS``, the same formula in both tools);
the table gives the largest absolute difference over all tensors and the share of entries that differ
by more than bf16's rounding step at their magnitude (``2^-8 |x|``, plus 1e-6 for entries near 0).

DELLA draws its masks at random (its parity with one injected stream is in the unit tests): its own
draws on the pair's real deltas are compared for the share kept, the share of each row's larger half
kept, and the L1 rescale.

Cost: Fisher merging and RegMean on the same pair (``--examples`` of each expert's own data), each run
cold (statistics computed: a fresh cache) and warm (cached, what a rerun or a sweep's next candidate
pays), against the pass they are made of: one forward (RegMean) or forward + backward (Fisher) pass of
each expert over its examples, batched as the merge batches them (model loading timed apart).
Medians of ``--repeats`` runs, in one process.

    python benchmarks/bench_merge_real.py --out benchmarks/results/merge_real.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import BENCH_PARAMS, EMIT, MERGEKIT_BEST, timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path("/work/coord/quick-final/experts")
#: Deterministic methods mergekit has (DARE and DELLA draw random masks: their parity is in the unit tests).
PARITY = ["linear", "task_arithmetic", "lines", "ties", "breadcrumbs", "breadcrumbs_ties", "sce", "model_stock", "slerp", "nuslerp"]
NO_BASE = {"linear", "slerp"}


def compare(ours: Path, theirs: Path) -> tuple[float, float]:
    """(largest |a - b|, share of entries beyond bf16 rounding) over every tensor of two model folders."""
    import torch

    from layerswap.io import ModelFolder

    a, b = ModelFolder(ours), ModelFolder(theirs)
    worst, beyond, total = 0.0, 0, 0
    for name in a.names():
        x, y = a.get(name, torch.float32), b.get(name, torch.float32)
        diff = (x - y).abs_()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        beyond += int((diff > y.abs().mul_(2.0**-8).add_(1e-6)).sum())
        total += diff.numel()
    return worst, beyond / max(1, total)


def parity(args: argparse.Namespace, work: Path, env: dict[str, str]) -> list[str]:
    layerswap = [str(Path(sys.executable).parent / "layerswap")]
    mergekit = [str(Path(sys.executable).parent / "mergekit-yaml")]
    lines = ["| method | max abs diff | entries beyond bf16 rounding | layerswap s (CPU s) | mergekit s (CPU s) |", "|---|---:|---:|---:|---:|"]
    for method in args.methods.split(","):
        params = {k: (args.density if v == "DENSITY" else v) for k, v in BENCH_PARAMS[method].items()}
        cfg = {"method": method, "experts": {"math": str(args.math), "lang": str(args.lang)}, "params": params}
        if method not in NO_BASE:
            cfg["base"] = str(args.base)
        cfg_path, mk_yaml = work / f"{method}.yaml", work / f"{method}.mergekit.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        subprocess.run([sys.executable, "-c", EMIT, str(cfg_path), str(mk_yaml)], env=env, check=True, capture_output=True)
        if "# note" in mk_yaml.read_text():
            raise SystemExit(f"{method}: the emitted YAML carries a note, so mergekit would compute something else")
        ours, theirs = work / f"{method}-ours", work / f"{method}-theirs"
        ow, _, oc = timed([*layerswap, "merge", str(cfg_path), "--out", str(ours)], env)
        tw, _, tc = timed([*mergekit, str(mk_yaml), str(theirs), *MERGEKIT_BEST], env)
        worst, share = compare(ours, theirs)
        lines.append(f"| {method} | {worst:.2e} | {share:.2e} | {ow:.1f} ({oc:.1f}) | {tw:.1f} ({tc:.1f}) |")
        print(lines[-1], flush=True)
        subprocess.run(["rm", "-rf", str(ours), str(theirs)], check=True)
    return lines


#: Real deltas DELLA's draws are checked on (math expert - base): attention, MLP, a middle and a top layer.
DELLA_TENSORS = ["model.layers.4.self_attn.q_proj.weight", "model.layers.9.mlp.down_proj.weight", "model.layers.16.mlp.gate_proj.weight"]


def della_draws(args: argparse.Namespace, density: float = 0.4, epsilon: float = 0.2) -> list[str]:
    """DELLA's own random draws (no injected stream) on the pair's real deltas, in both tools: the share
    kept, the share kept of each row's larger half (``density + epsilon/2`` expected), and the L1 rescale."""
    import torch
    from mergekit.sparsify import RescaleNorm, della_magprune

    from layerswap.io import ModelFolder
    from layerswap.merge.methods._math import stable_seed
    from layerswap.merge.methods.della import della_drop

    base, math_ = ModelFolder(args.base), ModelFolder(args.math)
    lines = [f"| tensor (math - base) | tool | kept (expected {density}) | kept of each row's larger half (expected {density + epsilon / 2:.2f}) "
             "| max relative error of the L1 rescale |", "|---|---|---:|---:|---:|"]
    for name in DELLA_TENSORS:
        delta = math_.get(name, torch.float32) - base.get(name, torch.float32)
        large = delta.abs() > delta.abs().median(dim=1, keepdim=True).values
        torch.manual_seed(7)
        draws = {"layerswap": della_drop(delta.clone(), density, epsilon, torch.Generator().manual_seed(stable_seed(0, name, "math")), "l1"),
                 "mergekit": della_magprune(delta.clone(), density, epsilon, RescaleNorm.l1)}
        for tool, out in draws.items():
            kept = out != 0
            factor = delta.abs().sum() / delta[kept].abs().sum()
            err = float(((out[kept] - delta[kept] * factor).abs() / (delta[kept] * factor).abs().clamp_min(1e-30)).max())
            lines.append(f"| {name} {tuple(delta.shape)} | {tool} | {kept.float().mean():.4f} | {kept[large].float().mean():.4f} | {err:.1e} |")
    return lines


def cost(args: argparse.Namespace, work: Path) -> list[str]:
    from layerswap.io import ModelFolder
    from layerswap.io.lm_passes import _backward_batches, input_grams, load_model, load_texts
    from layerswap.merge import merge, merge_config

    data = {"math": args.math_data, "lang": args.lang_data}
    texts = {label: load_texts(spec, data_dir=args.data_dir, limit=args.examples) for label, spec in data.items()}
    experts = {"math": args.math, "lang": args.lang}
    common = {"batch_size": args.batch_size, "seq_len": args.seq_len}
    samples: dict[str, list[float]] = {}

    def record(key: str, seconds: float) -> None:
        samples.setdefault(key, []).append(seconds)
        print(f"{key}: {seconds:.1f} s", flush=True)

    for _ in range(args.repeats):
        fwd = fb = load = 0.0
        for label, path in experts.items():
            t0 = time.perf_counter()
            model, tok = load_model(ModelFolder(path), "cpu")
            load += time.perf_counter() - t0
            t0 = time.perf_counter()
            input_grams(model, tok, texts[label], keep=lambda _: False, desc="forward", **common)  # no hook: a plain forward
            fwd += time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in _backward_batches(model, tok, texts[label], desc="forward+backward", **common):
                pass
            fb += time.perf_counter() - t0
            del model
        record("load both experts", load)
        record("forward pass of both experts", fwd)
        record("forward+backward pass of both experts", fb)
        for method in ("regmean", "fisher"):
            cfg = merge_config({"method": method, "experts": {k: str(v) for k, v in experts.items()},
                                "params": {"data": data, "examples": args.examples, "data_dir": args.data_dir, "device": "cpu", **common}})
            os.environ["LAYERSWAP_CACHE"] = tempfile.mkdtemp(dir=work, prefix="cache-")  # cold: statistics computed
            for state in ("cold", "warm"):
                out = work / f"{method}-{state}"
                t0 = time.perf_counter()
                merge(cfg, out)
                record(f"{method} {state}", time.perf_counter() - t0)
                subprocess.run(["rm", "-rf", str(out)], check=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    lines = [f"| step | median s (of {args.repeats}) |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in med.items()]
    for method, pass_key in (("regmean", "forward pass of both experts"), ("fisher", "forward+backward pass of both experts")):
        stats = med[f"{method} cold"] - med[f"{method} warm"]
        lines.append(
            f"| **{method}**: statistics (cold - warm) / {pass_key.split(' of')[0]} | **{stats / med[pass_key]:.2f}x** "
            f"(with model loading: {stats / (med[pass_key] + med['load both experts']):.2f}x) |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path(os.environ.get("LAYERSWAP_CACHE", ROOT / ".cache/layerswap")) / "models" / "gemma3-270m")
    ap.add_argument("--math", type=Path, default=DEMO / "math")
    ap.add_argument("--lang", type=Path, default=DEMO / "lang")
    ap.add_argument("--methods", default=",".join(PARITY), help="comma list of deterministic methods for the parity table")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--math-data", default="gsm8k")
    ap.add_argument("--lang-data", default="ntrex:sw")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", choices=["parity", "cost"], help="leave one part out")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_merge_real"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "merge_real.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LAYERSWAP_QUIET="1")
    os.environ["LAYERSWAP_QUIET"] = "1"
    text = ["# Merge methods on a real pair", "", f"Command: `python benchmarks/bench_merge_real.py {' '.join(sys.argv[1:])}`", "",
            f"Pair: base `{args.base}`, experts `{args.math}` and `{args.lang}`; {os.cpu_count()} CPU cores shared with other jobs.", ""]
    if args.skip != "parity":
        text += ["## DELLA's real draws on the pair's deltas (density 0.4, epsilon 0.2, rescale l1; one draw per tool)", "", *della_draws(args), ""]
        text += ["## Parity with mergekit (one run per tool; outputs in the inputs' dtype)", "", *parity(args, args.work, env), ""]
    if args.skip != "cost":
        text += [f"## Fisher and RegMean cost ({args.examples} examples per expert: math `{args.math_data}`, lang `{args.lang_data}`; "
                 f"batch {args.batch_size}, {args.seq_len} tokens)", "", *cost(args, args.work), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
