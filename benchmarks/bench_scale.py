"""Scale benchmark on realistic deltas: analysis, swap, TIES and a sweep at Llama-3.1-8B widths, side by side.

For each shape (``llama8b`` at ``--depth`` layers: Llama-3.1-8B's widths, bf16; or ``1.1e9``:
TinyLlama's shape) and delta profile (``dense-uniform``, ``dense-varying``, ``planted``; see
``synthetic.py``), a synthetic triple is written under ``--root`` (after a disk check: a disk too
small gets one line and nothing written), then, each contender in its own subprocess (wall time,
CPU time and the peak RSS of its process tree, polled), in one run:

- ``analyze``: ``layerswap.analyze(--top-k 1,5)`` against the read floor (every tensor of the three
  models through ``safe_open(...).get_tensor(k).float()``), ``--repeats`` rounds, medians of the
  per-round ratios; optionally once by another checkout (``--baseline-src``), whose tables must be
  identical byte for byte;
- ``swap``: ``layerswap swap`` against a durable copy of one model (copy + fsync), ``--repeats`` rounds;
- ``ties``: ``layerswap merge`` TIES (density 0.5) against ``mergekit-yaml`` on the YAML it emits, once;
- ``sweep``: ``layerswap sweep`` over one swap and the base on ``--sweep-limit`` proxy examples, once.

Each (shape, profile) appends its rows to ``results/scale.json``; ``results/scale.md`` is rebuilt from
all rows, so separate invocations accumulate. ``--keep`` keeps the synthetic models (deleted otherwise).

    python benchmarks/bench_scale.py --shape llama8b --depth 4 --profiles dense-uniform,dense-varying,planted
    python benchmarks/bench_scale.py --shape 1.1e9 --contenders analyze
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_analysis import ANALYZE_SNIPPET, FLOOR_SNIPPET, measure, tables_identical  # noqa: E402
from bench_merge import copy_cmd  # noqa: E402
from synthetic import PROFILES, check_disk, llama8b_shape, llama_shape, shape_bytes, tensor_specs, tiny_shape, write_triple  # noqa: E402

from layerswap.errors import LayerswapError  # noqa: E402

JSON = HERE / "results" / "scale.json"
MD = HERE / "results" / "scale.md"
CONTENDERS = ("analyze", "swap", "ties", "sweep")
GIB = 2**30


def shape_cfg(shape: str, depth: int) -> dict:
    if shape in ("llama8b", "tiny"):
        return llama8b_shape(depth) if shape == "llama8b" else tiny_shape(depth)
    return llama_shape(float(shape))


def shape_label(shape: str, depth: int) -> str:
    return f"llama8b x{depth}" if shape == "llama8b" else f"tiny x{depth}" if shape == "tiny" else shape


def folder_name(shape: str, depth: int, profile: str) -> str:
    return f"{'8b' if shape == 'llama8b' else shape}{depth if shape in ('llama8b', 'tiny') else ''}-{profile}"


def run(label: str, cmd: list[str], env: dict, *, cwd: str | None = None, timeout: float | None = None) -> dict:
    print(f"  {label} ...", flush=True)
    res = measure(cmd, env=env, cwd=cwd, timeout=timeout)
    status = "ok" if res["rc"] == 0 else ("timed out" if res["timed_out"] else f"exit {res['rc']}")
    print(f"    {res['wall']:.1f} s wall, {res['cpu']:.1f} s CPU, {res['peak_rss'] / GIB:.2f} GiB, {status}", flush=True)
    if res["rc"] != 0:
        print(res["output"][-2000:], flush=True)
    return {"label": label, "wall": res["wall"], "cpu": res["cpu"], "peak_rss": res["peak_rss"], "rc": res["rc"],
            "output": res["output"][-4000:]}  # fmt: skip


def bench_one(root: Path, args: argparse.Namespace, env: dict, py: str) -> dict:
    """Every chosen contender on one triple; returns a JSON-able record."""
    paths = [str(root / n) for n in ("base", "math", "lang")]
    here = str(HERE.parent)
    layerswap = str(Path(py).parent / "layerswap")
    rec: dict = {"rounds": {}, "once": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.root))
    try:
        for p in (Path(x) for x in paths):  # warm the page cache equally for everyone
            for f in p.glob("*.safetensors"):
                with open(f, "rb") as fh:
                    while fh.read(1 << 26):
                        pass
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", flush=True)
            if "analyze" in args.contenders:
                rec["rounds"].setdefault("floor", []).append(run("floor", [py, "-c", FLOOR_SNIPPET, *paths], env, cwd=here))
                rec["rounds"].setdefault("analyze", []).append(
                    run("analyze", [py, "-c", ANALYZE_SNIPPET, str(root), str(work / "analysis")], env, cwd=here)
                )
            if "swap" in args.contenders:
                shutil.rmtree(work / "out", ignore_errors=True)
                os.sync()
                rec["rounds"].setdefault("durable copy", []).append(run("durable copy", copy_cmd(root / "math", work / "out", durable=True), env))
                shutil.rmtree(work / "out", ignore_errors=True)
                os.sync()
                swap = [layerswap, "swap", "--math", paths[1], "--lang", paths[2], "--bottom", "1", "--top", "1", "--out", str(work / "out")]
                rec["rounds"].setdefault("swap", []).append(run("swap", swap, env))
                shutil.rmtree(work / "out", ignore_errors=True)
        if "analyze" in args.contenders and args.baseline_src is not None:
            src = str(args.baseline_src.resolve())
            benv = dict(env, PYTHONPATH=src + os.pathsep + env.get("PYTHONPATH", ""))
            rec["once"]["baseline analyze"] = run("baseline analyze", [py, "-c", ANALYZE_SNIPPET, str(root), str(work / "baseline")], benv, cwd=src)
            rec["tables_differ"] = tables_identical(work / "analysis", work / "baseline")
            print(f"  tables differ: {rec['tables_differ']}", flush=True)
        if "ties" in args.contenders:
            cfg = {"method": "ties", "base": paths[0], "experts": {"math": paths[1], "lang": paths[2]},
                   "params": {"density": 0.5, "weights": {"math": 0.5, "lang": 0.5}}}  # fmt: skip
            (work / "ties.yaml").write_text(yaml.safe_dump(cfg))
            mk = work / "ties.mergekit.yaml"
            rec["once"]["ties"] = run("ties", [layerswap, "merge", str(work / "ties.yaml"), "--out", str(work / "ours"), "--emit-mergekit", str(mk)], env)
            shutil.rmtree(work / "ours", ignore_errors=True)
            if mk.exists():
                rec["once"]["mergekit ties"] = run("mergekit ties", [str(Path(py).parent / "mergekit-yaml"), str(mk), str(work / "theirs")], env)
            shutil.rmtree(work / "theirs", ignore_errors=True)
        if "sweep" in args.contenders:
            sweep = {
                "base": paths[0], "math": paths[1], "lang": paths[2], "languages": ["sw"], "tasks": ["proxy"],
                "limit": args.sweep_limit, "shots": 0, "batch_size": 1, "data_dir": str(args.data_dir.resolve()), "dtype": "bfloat16",
                "candidates": {"grid": {"bottom": [1], "top": [1], "transition": [0]}, "baselines": ["base"]},
            }  # fmt: skip
            (work / "sweep.yaml").write_text(yaml.safe_dump(sweep))
            rec["once"]["sweep"] = run("sweep", [layerswap, "sweep", str(work / "sweep.yaml"), "--out", str(work / "sweep")], env,
                                       timeout=args.sweep_timeout)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def ratio(runs: list[dict], floor: list[dict], key: str = "wall") -> float:
    return statistics.median(a[key] / f[key] for a, f in zip(runs, floor, strict=True))


def render(records: list[dict]) -> str:
    lines = [
        "# Scale benchmark: realistic deltas at Llama-3.1-8B widths",
        "",
        "Synthetic bf16 triples from `benchmarks/synthetic.py` (base, math, lang; Llama-3.1-8B's widths at the given depth, or "
        "TinyLlama's 1.1e9 shape), three delta profiles: **dense-uniform** (`lr x sign` everywhere, few distinct |deltas| after bf16 "
        "rounding: massive ties), **dense-varying** (Gaussian, scale log-normal by tensor), **planted** (large deltas in a few layers, "
        "noise elsewhere). Each contender runs in its own subprocess; wall and CPU seconds and the peak RSS of its process tree "
        "(psutil, polled every 50 ms). Rounds alternate the contenders; medians, and ratios are medians of per-round ratios. The "
        "machine (2 cores, 24 GiB) was shared with other sessions' jobs: compare within a row group, not across runs.",
        "",
        "| shape | profile | run | rounds | wall s | CPU s | peak RSS GiB | vs reference (wall / CPU) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    notes = []
    for rec in records:
        rounds, once = rec["rounds"], rec["once"]
        head = f"| {rec['shape']} | {rec['profile']} "
        pairs = [("floor", None), ("analyze", "floor"), ("durable copy", None), ("swap", "durable copy")]
        for name, ref in pairs:
            if name not in rounds:
                continue
            rs = rounds[name]
            vs = f"{ratio(rs, rounds[ref]):.2f}x / {ratio(rs, rounds[ref], 'cpu'):.2f}x" if ref else "reference"
            if name == "analyze":
                vs = f"**{vs}**"
            lines.append(head + f"| {name} | {len(rs)} | {med(rs, 'wall'):.1f} | {med(rs, 'cpu'):.1f} | "
                         f"{max(r['peak_rss'] for r in rs) / GIB:.2f} | {vs} |")  # fmt: skip
        for name, ref in (("baseline analyze", "floor"), ("ties", None), ("mergekit ties", "ties"), ("sweep", None)):
            if name not in once:
                continue
            r = once[name]
            if ref == "floor" and "floor" in rounds:
                vs = f"{r['wall'] / med(rounds['floor'], 'wall'):.2f}x / {r['cpu'] / med(rounds['floor'], 'cpu'):.2f}x (of the median floor)"
            elif ref == "ties" and "ties" in once:
                vs = f"layerswap / mergekit: {once['ties']['wall'] / r['wall']:.2f}x / {once['ties']['cpu'] / r['cpu']:.2f}x"
            else:
                vs = ""
            status = "" if r["rc"] == 0 else f" (**failed: exit {r['rc']}**)"
            lines.append(head + f"| {name}{status} | 1 | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_rss'] / GIB:.2f} | {vs} |")
        if "analyze" in rounds:
            info = json.loads(rounds["analyze"][-1]["output"].strip().splitlines()[-1])["info"]
            notes.append(
                f"- {rec['shape']}, {rec['profile']}: analyze took the **{info['top_k_method']}** method "
                f"(magnitudes and top-k {info['seconds']['magnitudes']} s, resolution {info['seconds']['overlap']} s, "
                f"{info['boundary_values_kept']:,} histogram cells kept"
                + (f"; pass 1 CPU s outside the layers / in the layers: {info['pass1_phases']['outside_layers']['cpu']} / "
                   f"{info['pass1_phases']['layers']['cpu']}" if "pass1_phases" in info else "")  # fmt: skip
                + ")"
                + (f"; tables vs `{rec['baseline']}`: " + ("**identical byte for byte**" if not rec["tables_differ"] else f"DIFFER: {rec['tables_differ']}")
                   if "tables_differ" in rec else "")  # fmt: skip
                + f"; {rec['params'] / 1e9:.2f}e9 parameters per model, largest tensor {rec['largest'] / 1e6:.0f}M; command: `{rec['command']}`."
            )
        elif rec.get("command"):
            notes.append(f"- {rec['shape']}, {rec['profile']}: command: `{rec['command']}`{rec.get('note', '')}.")
    return "\n".join(lines + [""] + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama8b", help="llama8b (Llama-3.1-8B widths at --depth), tiny (a smoke test) or a parameter count like 1.1e9")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", type=Path, default=Path("/work/synth"), help="synthetic models go to ROOT/<shape>-<profile>")
    ap.add_argument("--baseline-src", type=Path, default=None, help="another layerswap checkout: its analyze runs once, tables compared")
    ap.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--sweep-limit", type=int, default=2)
    ap.add_argument("--sweep-timeout", type=float, default=1800)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic models (default: delete each triple after its runs)")
    ap.add_argument("--render", action="store_true", help="only rebuild results/scale.md from results/scale.json")
    args = ap.parse_args(argv)
    if args.render:
        MD.write_text(render(json.loads(JSON.read_text())), encoding="utf-8")
        print(MD.read_text())
        return 0
    args.contenders = [c for c in args.contenders.split(",") if c]
    profiles = [p for p in args.profiles.split(",") if p]
    if bad := [c for c in args.contenders if c not in CONTENDERS] + [p for p in profiles if p not in PROFILES]:
        print(f"error: unknown contender or profile {', '.join(bad)}: pick from {CONTENDERS} and {PROFILES}", file=sys.stderr)
        return 2
    cfg = shape_cfg(args.shape, args.depth)
    label = shape_label(args.shape, args.depth)
    try:
        args.root.mkdir(parents=True, exist_ok=True)
        check_disk(args.root, cfg)
    except LayerswapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env = dict(os.environ, LAYERSWAP_QUIET="1")
    py = sys.executable
    command = "python benchmarks/bench_scale.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    records = json.loads(JSON.read_text()) if JSON.exists() else []
    for profile in profiles:
        root = args.root / folder_name(args.shape, args.depth, profile)
        print(f"== {label}, {profile}: {root}", flush=True)
        t0 = time.perf_counter()
        if not (root / "lang" / "config.json").exists():
            write_triple(root, cfg=cfg, profile=profile)
        made = time.perf_counter() - t0
        try:
            rec = bench_one(root, args, env, py)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        rec.update(shape=label, profile=profile, command=command, made_s=round(made, 1), params=shape_bytes(cfg) // 2,
                   largest=max(math.prod(s.shape) for s in tensor_specs(cfg)), baseline=str(args.baseline_src) if args.baseline_src else None,
                   machine=f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        rec["contenders"] = sorted(args.contenders)
        # a later run replaces the record of the same triple and contenders only (an analyze rerun keeps the sweep's)
        records = [r for r in records if (r["shape"], r["profile"], r.get("contenders")) != (label, profile, rec["contenders"])] + [rec]
        JSON.parent.mkdir(parents=True, exist_ok=True)
        JSON.write_text(json.dumps(records, indent=1))
        MD.write_text(render(records), encoding="utf-8")
        print(MD.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
