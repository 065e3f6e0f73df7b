"""Benchmark: the whole delta analysis against the plain read floor (safe_open), side by side, repeated.

On a synthetic base + two experts (``benchmarks/synthetic.py``), in one run and on the same files,
each round runs, each in its own subprocess and one after the other:

1. **floor**: every tensor of base, math and lang read once into float32 with plain
   ``safetensors.safe_open(path, framework="pt").get_tensor(name).float()``, nothing else: the
   fastest plain way to get the numbers any analysis has to look at.
2. **reader**: the same reads through layerswap's own reader, ``ModelFolder.get(name, torch.float32)``
   (must be no slower than the floor).
3. **analysis**: ``layerswap.analyze`` with magnitudes, exact top-1% and top-5% overlap, sign
   agreement, cosines and its tables (figures off: they do not depend on the model size).
4. optionally **baseline**: the same analysis by another checkout of layerswap (``--baseline-src``,
   e.g. the last commit exported with ``git archive``), whose tables must be identical byte for byte.

Wall time, CPU time and peak resident memory (the process tree, polled with psutil) are measured
from outside; the table reports the median of ``--repeats`` rounds and each run's ratio to the floor
of its own round. Target: analysis <= 2.5x the floor. Results go to ``benchmarks/results/analysis.md``.

    python benchmarks/bench_analysis.py --root /work/synth/1.1e9 --repeats 3 [--baseline-src /tmp/old]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "analysis.md"
TABLES = ("deltas", "layers", "overlap", "cosine", "topk", "thresholds", "contrast")

FLOOR_SNIPPET = """
import glob, sys
from safetensors import safe_open
for path in sys.argv[1:]:
    for file in sorted(glob.glob(path + "/*.safetensors")):
        with safe_open(file, framework="pt") as st:
            for name in st.keys():
                st.get_tensor(name).float()
"""

READER_SNIPPET = """
import sys, torch
from layerswap.io import ModelFolder
for path in sys.argv[1:]:
    folder = ModelFolder(path)
    for name in folder.names():
        folder.get(name, torch.float32)
"""

ANALYZE_SNIPPET = """
import json, sys
import layerswap
from layerswap.analysis import analyze
root, out = sys.argv[1], sys.argv[2]
print("layerswap from", layerswap.__file__)
a = analyze(root + "/base", {"math": root + "/math", "lang": root + "/lang"}, top_k=[1, 5], out=out, overwrite=True, plots=False)
bd = a.boundaries
tot = a.total_overlap()
print(json.dumps({
    "info": a.info,
    "boundaries": {k: bd[k] for k in ("bottom", "top", "transition", "score", "separation", "reason")},
    "overlap": [{"k": r.k_percent, "jaccard": r.jaccard, "expected": r.expected_jaccard, "sign_agree": r.sign_agree} for r in tot.itertuples()],
}))
"""


def measure(cmd: list[str], *, timeout: float | None = None, env: dict | None = None, cwd: str | None = None) -> dict:
    """Run ``cmd``; return wall and CPU seconds, peak RSS of its process tree, exit code and output."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        ps = psutil.Process(proc.pid)
        peak = 0
        cpu: dict[int, float] = {}
        timed_out = False
        while proc.poll() is None:
            try:
                procs = [ps] + ps.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            if timeout is not None and time.perf_counter() - start > timeout:
                for p in [ps] + ps.children(recursive=True):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                timed_out = True
                break
            time.sleep(0.05)
        proc.wait()
        wall = time.perf_counter() - start
        out_file.seek(0)
        output = out_file.read().decode("utf-8", "replace")
    return {
        "wall": wall,
        "cpu": sum(cpu.values()),
        "peak_rss": peak,
        "rc": proc.returncode,
        "timed_out": timed_out,
        "output": output,
    }


def tables_identical(a: Path, b: Path) -> list[str]:
    """Names of the tables (CSV, boundaries.yaml, summary.md) that differ between two analysis folders."""
    names = [f"{t}.csv" for t in TABLES] + ["boundaries.yaml", "summary.md"]
    return [
        n
        for n in names
        if (a / n).exists() != (b / n).exists() or ((a / n).exists() and not filecmp.cmp(a / n, b / n, shallow=False))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=Path("/work/synth/1.1e9"), help="folder with base/, math/, lang/ from synthetic.py"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each runs every contender once); medians are reported")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another layerswap checkout (folder holding layerswap/) to run side by side",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--mergelens", action="store_true", help="also run `mergelens compare --base` once (slow: > 20 min here)")
    parser.add_argument("--mergelens-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    env = dict(os.environ, LAYERSWAP_QUIET="1")
    paths = [str(root / n) for n in ("base", "math", "lang")]
    from layerswap.io import ModelFolder

    base = ModelFolder(root / "base")
    params = base.num_parameters
    largest = 4 * max(base.info(n).numel for n in base.names())
    py = sys.executable
    runs: dict[str, list[dict]] = {}
    here = str(HERE.parent)  # python -c puts the working folder first on sys.path: it decides which layerswap runs
    contenders = [
        ("floor", [py, "-c", FLOOR_SNIPPET, *paths], env, here),
        ("reader", [py, "-c", READER_SNIPPET, *paths], env, here),
        ("analysis", None, env, here),
    ]
    if args.baseline_src is not None:
        src = str(args.baseline_src.resolve())
        contenders.append(("baseline", None, dict(env, PYTHONPATH=src + os.pathsep + env.get("PYTHONPATH", "")), src))
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    differ: list[str] = []
    try:
        for r in range(args.repeats):
            for name, cmd, run_env, cwd in contenders:
                if cmd is None:
                    cmd = [py, "-c", ANALYZE_SNIPPET, str(root), str(tmp / name)]
                print(f"round {r + 1}/{args.repeats}: {name} ...", flush=True)
                res = measure(cmd, env=run_env, cwd=cwd)
                if res["rc"] != 0:
                    print(res["output"][-3000:])
                    return 1
                which = [line for line in res["output"].splitlines() if line.startswith("layerswap from")]
                print(
                    f"  {res['wall']:.1f} s wall, {res['cpu']:.1f} s CPU, {res['peak_rss'] / 2**30:.2f} GiB {' '.join(which)}",
                    flush=True,
                )
                runs.setdefault(name, []).append(res)
            if "baseline" in runs and r == 0:
                differ = tables_identical(tmp / "analysis", tmp / "baseline")
                print(
                    "tables identical to the baseline's" if not differ else f"tables DIFFER from the baseline's: {differ}",
                    flush=True,
                )
        ml = None
        if args.mergelens:
            mergelens = shutil.which("mergelens") or str(Path(py).parent / "mergelens")
            ml = measure(
                [mergelens, "compare", paths[1], paths[2], "--base", paths[0], "--json", str(tmp / "mergelens.json")],
                timeout=args.mergelens_timeout,
                env=env,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = json.loads(runs["analysis"][-1]["output"].strip().splitlines()[-1])
    gib = 2**30

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def ratio(name: str, key: str = "wall") -> float:
        """Median over rounds of this run's time over the floor's time in the same round."""
        return statistics.median(a[key] / f[key] for a, f in zip(runs[name], runs["floor"], strict=True))

    labels = {
        "floor": "**floor**: `safe_open(f).get_tensor(k).float()` for every tensor of base+math+lang",
        "reader": "layerswap's reader: `ModelFolder.get(k, torch.float32)` for every tensor of base+math+lang",
        "analysis": "**layerswap analyze** (magnitudes, exact top-1% and top-5% overlap, sign agreement, cosine, tables)",
        "baseline": f"the same analysis by `{args.baseline_src}` (side by side)",
    }
    command = "python benchmarks/bench_analysis.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    load = os.getloadavg()
    lines = [
        "# Analysis benchmark",
        "",
        f"Synthetic Llama-shaped triple from `benchmarks/synthetic.py` at `{root}`: {params / 1e9:.2f}e9 parameters each, bf16, "
        f"1 GB shards; largest tensor {largest / 4 / 1e6:.1f}M parameters ({largest / 2**20:.0f} MiB in float32). "
        f"Machine: {psutil.cpu_count()} CPU cores (shared with other jobs: load average {load[0]:.1f} at the end), "
        f"{psutil.virtual_memory().total / gib:.0f} GiB RAM; the files were in the page cache.",
        "",
        f"Command: `{command}`",
        "",
        "The floor is the fastest plain way to look at every number once: each tensor of the three checkpoints read "
        "with safetensors' own `safe_open(...).get_tensor(name)` and converted with `.float()`, nothing computed. "
        f"Each contender runs in its own subprocess, one after the other, {args.repeats} rounds; medians below, and each "
        "ratio is the median of the per-round ratios to that round's floor (so a slow moment on the shared cores hits both).",
        "",
        "| run | wall s (median) | CPU s (median) | peak RSS GiB (max) | wall vs floor | CPU vs floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in runs:
        peak = max(r["peak_rss"] for r in runs[name]) / gib
        vs = "1.00x" if name == "floor" else f"{ratio(name):.2f}x"
        cpu_vs = "1.00x" if name == "floor" else f"{ratio(name, 'cpu'):.2f}x"
        if name == "analysis":
            vs, cpu_vs = f"**{vs}**", f"**{cpu_vs}**"
        lines.append(f"| {labels[name]} | {med(name, 'wall'):.1f} | {med(name, 'cpu'):.1f} | {peak:.2f} | {vs} | {cpu_vs} |")
    if ml is not None:
        status = "timed out" if ml["timed_out"] else ("ok" if ml["rc"] == 0 else f"exit {ml['rc']}")
        lines.append(
            f"| mergelens compare --base ({status}, one run) | {ml['wall']:.1f} | {ml['cpu']:.1f} | {ml['peak_rss'] / gib:.2f} | | |"
        )
    per_round = ", ".join(f"{a['wall']:.1f}/{f['wall']:.1f}" for a, f in zip(runs["analysis"], runs["floor"], strict=True))
    lines += [
        "",
        f"- Time target (analysis <= 2.5x the floor): {ratio('analysis'):.2f}x wall ({ratio('analysis', 'cpu'):.2f}x CPU) -> "
        f"{'met' if ratio('analysis') <= 2.5 else 'NOT met'}. Per round, analysis/floor wall s: {per_round}.",
        f"- Reader: `ModelFolder.get` {ratio('reader'):.2f}x the floor's wall time ({ratio('reader', 'cpu'):.2f}x CPU).",
        f"- Passes (last run): magnitudes and top-k {result['info']['seconds']['magnitudes']} s, overlap resolution "
        f"{result['info']['seconds']['overlap']} s; top-k method: {result['info'].get('top_k_method', 'two passes')}; "
        f"values kept at most: {result['info']['boundary_values_kept']:,}.",
    ]
    if "baseline" in runs:
        lines.append(
            f"- Baseline: {ratio('baseline'):.2f}x the floor's wall time ({ratio('baseline', 'cpu'):.2f}x CPU); its tables (every CSV, "
            f"boundaries.yaml, summary.md) are {'**identical byte for byte**' if not differ else 'DIFFERENT: ' + ', '.join(differ)}."
        )
    bd = result["boundaries"]
    lines.append(
        f"- Recommendation: bottom={bd['bottom']}, top={bd['top']}, transition={bd['transition']} ({bd['separation']} separation; "
        f"planted: language delta in the bottom 3 and top 2 layers). {bd['reason']}"
    )
    for o in result["overlap"]:
        lines.append(
            f"- Top-{o['k']:g}%: Jaccard {o['jaccard']:.4f} vs {o['expected']:.4f} for independent sets; sign agreement {o['sign_agree']:.3f}."
        )
    if ml is not None:
        tail = " ".join(ml["output"].strip().splitlines()[-3:])[-400:]
        lines.append(
            f"- mergelens: {'timed out after ' + str(int(args.mergelens_timeout)) + ' s' if ml['timed_out'] else 'exit code ' + str(ml['rc'])}; last output: `{tail}`"
        )
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0 if not differ else 2


if __name__ == "__main__":
    sys.exit(main())
