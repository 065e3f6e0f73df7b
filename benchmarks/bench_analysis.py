"""Benchmark: the whole delta analysis vs simply reading the three checkpoints, and mergelens.

On a synthetic base + two experts (``benchmarks/synthetic.py``), in one run and on the same files:

1. **read**: every tensor of base, math and lang read into float32 once (``ModelFolder.get``),
   nothing else: the floor any analysis pays. Run before and after the analysis; the mean is used.
2. **analysis**: ``layerswap.analyze`` with magnitudes, exact top-1% and top-5% overlap and
   cosines, writing its tables (figures off: they do not depend on the model size).
3. **mergelens**: ``mergelens compare MATH LANG --base BASE --json ...`` (PyPI ``mergelens``).

Each runs in its own subprocess; wall time, CPU time and peak resident memory (the process tree,
polled with psutil) are measured from outside. Targets: analysis <= 3x read; peak RSS of the
analysis < 2 GiB + 4 x the largest tensor in float32. Results go to ``benchmarks/results/analysis.md``.

    python benchmarks/bench_analysis.py --root /work/synth/1e9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "analysis.md"

READ_SNIPPET = """
import sys, torch
from layerswap.io import ModelFolder
for path in sys.argv[1:]:
    folder = ModelFolder(path)
    for name in folder.names():
        folder.get(name, torch.float32)
"""

ANALYZE_SNIPPET = """
import json, sys
from layerswap.analysis import analyze
root, out = sys.argv[1], sys.argv[2]
a = analyze(root + "/base", {"math": root + "/math", "lang": root + "/lang"}, top_k=[1, 5], out=out, overwrite=True, plots=False)
bd = a.boundaries
tot = a.total_overlap()
print(json.dumps({
    "info": a.info,
    "boundaries": {k: bd[k] for k in ("bottom", "top", "transition", "score", "separation", "reason")},
    "overlap": [{"k": r.k_percent, "jaccard": r.jaccard, "expected": r.expected_jaccard, "sign_agree": r.sign_agree} for r in tot.itertuples()],
}))
"""


def measure(cmd: list[str], *, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; return wall and CPU seconds, peak RSS of its process tree, exit code and output."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out_file:
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, env=env)
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
            time.sleep(0.1)
        proc.wait()
        wall = time.perf_counter() - start
        out_file.seek(0)
        output = out_file.read().decode("utf-8", "replace")
    return {"wall": wall, "cpu": sum(cpu.values()), "peak_rss": peak, "rc": proc.returncode, "timed_out": timed_out, "output": output}


def largest_tensor_bytes_f32(path: Path) -> int:
    from layerswap.io import ModelFolder

    folder = ModelFolder(path)
    return 4 * max(folder.info(n).numel for n in folder.names())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/work/synth/1e9"), help="folder with base/, math/, lang/ from synthetic.py")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--mergelens-timeout", type=float, default=1800.0)
    parser.add_argument("--skip-mergelens", action="store_true")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    env = dict(os.environ, LAYERSWAP_QUIET="1")
    paths = [str(root / n) for n in ("base", "math", "lang")]
    from layerswap.io import ModelFolder

    params = ModelFolder(root / "base").num_parameters
    largest = largest_tensor_bytes_f32(root / "base")
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        print("read (1/2)...", flush=True)
        read1 = measure([sys.executable, "-c", READ_SNIPPET, *paths], env=env)
        print(f"  {read1['wall']:.1f} s", flush=True)
        print("analysis...", flush=True)
        ana = measure([sys.executable, "-c", ANALYZE_SNIPPET, str(root), str(tmp / "analysis")], env=env)
        print(f"  {ana['wall']:.1f} s", flush=True)
        if ana["rc"] != 0:
            print(ana["output"][-3000:])
            return 1
        print("read (2/2)...", flush=True)
        read2 = measure([sys.executable, "-c", READ_SNIPPET, *paths], env=env)
        print(f"  {read2['wall']:.1f} s", flush=True)
        ml = None
        if not args.skip_mergelens:
            print("mergelens...", flush=True)
            mergelens = shutil.which("mergelens") or str(Path(sys.executable).parent / "mergelens")
            ml = measure([mergelens, "compare", paths[1], paths[2], "--base", paths[0], "--json", str(tmp / "mergelens.json")], timeout=args.mergelens_timeout, env=env)
            print(f"  {ml['wall']:.1f} s rc={ml['rc']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = json.loads(ana["output"].strip().splitlines()[-1])
    read_wall = (read1["wall"] + read2["wall"]) / 2
    read_cpu = (read1["cpu"] + read2["cpu"]) / 2
    budget = 2 * 2**30 + 4 * largest
    gib = 2**30
    lines = [
        "# Analysis benchmark",
        "",
        f"Synthetic Llama-shaped triple from `benchmarks/synthetic.py` at `{root}`: {params / 1e9:.2f}e9 parameters each, bf16, "
        f"1 GB shards; largest tensor {largest / 4 / 1e6:.1f}M parameters ({largest / 2**20:.0f} MiB in float32). "
        f"Machine: {psutil.cpu_count()} CPU cores (shared with other jobs while measured), {psutil.virtual_memory().total / gib:.0f} GiB RAM.",
        "",
        "Command: `python benchmarks/bench_analysis.py --root " + str(args.root) + "`",
        "",
        "| run | wall s | CPU s | peak RSS GiB | wall vs read |",
        "|---|---:|---:|---:|---:|",
        f"| read base+math+lang into float32 once (before) | {read1['wall']:.1f} | {read1['cpu']:.1f} | {read1['peak_rss'] / gib:.2f} | |",
        f"| read base+math+lang into float32 once (after) | {read2['wall']:.1f} | {read2['cpu']:.1f} | {read2['peak_rss'] / gib:.2f} | |",
        f"| **layerswap analyze** (magnitudes, exact top-1% and top-5% overlap, cosine, tables) | {ana['wall']:.1f} | {ana['cpu']:.1f} | {ana['peak_rss'] / gib:.2f} | **{ana['wall'] / read_wall:.2f}x** |",
    ]
    if ml is not None:
        status = "timed out" if ml["timed_out"] else ("ok" if ml["rc"] == 0 else f"exit {ml['rc']}")
        lines.append(f"| mergelens compare --base ({status}) | {ml['wall']:.1f} | {ml['cpu']:.1f} | {ml['peak_rss'] / gib:.2f} | {ml['wall'] / read_wall:.2f}x |")
    lines += [
        "",
        f"- Time target (analysis <= 3x read): {ana['wall'] / read_wall:.2f}x wall ({ana['cpu'] / max(read_cpu, 1e-9):.2f}x CPU) -> "
        f"{'met' if ana['wall'] <= 3 * read_wall else 'NOT met'}.",
        f"- Memory target (peak RSS < 2 GiB + 4 x largest tensor f32 = {budget / gib:.2f} GiB): {ana['peak_rss'] / gib:.2f} GiB -> "
        f"{'met' if ana['peak_rss'] < budget else 'NOT met'}.",
        f"- Passes: magnitudes {result['info']['seconds']['magnitudes']} s, overlap {result['info']['seconds']['overlap']} s; "
        f"threshold refining pass used: {result['info']['threshold_refined']}; boundary values kept: {result['info']['boundary_values_kept']:,}.",
        f"- Recommendation: bottom={result['boundaries']['bottom']}, top={result['boundaries']['top']}, transition={result['boundaries']['transition']} "
        f"({result['boundaries']['separation']} separation; planted: language delta in the bottom 3 and top 2 layers). {result['boundaries']['reason']}",
    ]
    for o in result["overlap"]:
        lines.append(f"- Top-{o['k']:g}%: Jaccard {o['jaccard']:.4f} vs {o['expected']:.4f} for independent sets; sign agreement {o['sign_agree']:.3f}.")
    if ml is not None:
        tail = " ".join(ml["output"].strip().splitlines()[-3:])[-400:]
        lines.append(f"- mergelens: {'timed out after ' + str(int(args.mergelens_timeout)) + ' s' if ml['timed_out'] else 'exit code ' + str(ml['rc'])}; last output: `{tail}`")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
