"""Load benchmark: analysis and merges of 1e9- and 3e9-parameter synthetic triples, peak memory measured.

Why: the toolkit must stream (one tensor at a time), never hold a whole model. Each command runs in
its own subprocess under ``/usr/bin/time -v`` (peak resident set size of the process, children
included), one at a time; the table puts peak RSS beside one model's size, and the 3e9 run beside
the 1e9 run, so that "memory does not grow with the model" is a ratio, not a claim.

    python benchmarks/bench_load.py --sizes 1e9,3e9 --work /work/load-bench

Inputs come from ``benchmarks/synthetic.py --params N --out /work/synth/N``. Outputs are written
under ``--work`` and deleted after each run (a 3e9 merge is 6 GB).

Each size also runs two floors, the fastest plain way to do the same work, and every run's wall
time is shown against its floor: reading every tensor of base, math and lang once into float32
with ``safetensors.safe_open(...).get_tensor(k).float()`` (the floor of ``analyze``), and a durable
copy of one model's weight files (``shutil.copyfile`` of each, then ``fsync``: the floor of a swap
or merge, which writes one model).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_GIB = 4.0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; return wall seconds, peak RSS (MiB) and the exit code."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) / 1024 if m else float("nan")
    tail = [line for line in proc.stderr.splitlines() if line.startswith(("error", "Traceback"))]
    return {"wall_s": wall, "rss_mib": rss, "rc": proc.returncode, "error": tail[-1] if tail else ""}


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["LAYERSWAP_QUIET"] = "1"
    return env


READ_FLOOR = "read floor: safe_open(...).get_tensor(k).float(), every tensor of base+math+lang"
COPY_FLOOR = "copy floor: durable copy of one model (copyfile + fsync)"
_READ = (
    "import glob,sys\nfrom safetensors import safe_open\nfor p in sys.argv[1:]:\n for f in sorted(glob.glob(p+'/*.safetensors')):\n"
    "  with safe_open(f,framework='pt') as st:\n   for k in st.keys():\n    st.get_tensor(k).float()"
)
_COPY = (
    "import os,shutil,sys,pathlib;d=pathlib.Path(sys.argv[2]);d.mkdir(parents=True);"
    "fs=[shutil.copyfile(p,d/p.name) for p in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors'))];"
    "[os.fsync(f.fileno()) for f in [open(p,'rb') for p in fs]]"
)


def floor_of(label: str) -> str:
    return READ_FLOOR if label.startswith("analyze") else COPY_FLOOR


def commands(models: Path, work: Path) -> list[tuple[str, list[str], Path]]:
    base, math, lang = (models / r for r in ("base", "math", "lang"))
    py = [sys.executable, "-m", "layerswap"]
    ties = work / "ties.yaml"
    ties.write_text(
        f"method: ties\nbase: {base}\nexperts: {{math: {math}, lang: {lang}}}\nparams: {{density: 0.2}}\n", encoding="utf-8"
    )
    return [
        (READ_FLOOR, [sys.executable, "-c", _READ, str(base), str(math), str(lang)], models),
        (COPY_FLOOR, [sys.executable, "-c", _COPY, str(math), str(work / "copy")], work / "copy"),
        (
            "analyze (deltas, exact top-1/5% overlap, boundaries, plots)",
            [
                *py,
                "analyze",
                "--base",
                str(base),
                "--expert",
                f"math={math}",
                "--expert",
                f"lang={lang}",
                "--out",
                str(work / "analysis"),
            ],
            work / "analysis",
        ),
        (
            "swap b=3 u=2 (raw byte copy)",
            [*py, "swap", "--math", str(math), "--lang", str(lang), "--bottom", "3", "--top", "2", "--out", str(work / "swap")],
            work / "swap",
        ),
        (
            "swap b=3 u=2 t=1 (2 blended layers)",
            [
                *py,
                "swap",
                "--math",
                str(math),
                "--lang",
                str(lang),
                "--bottom",
                "3",
                "--top",
                "2",
                "--transition",
                "1",
                "--out",
                str(work / "swap-t1"),
            ],
            work / "swap-t1",
        ),
        (
            "merge ties density 0.2 (every tensor in float32)",
            [*py, "merge", str(ties), "--out", str(work / "ties")],
            work / "ties",
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e9,3e9")
    ap.add_argument("--synth", default="/work/synth", help="folder holding SIZE/{base,math,lang}")
    ap.add_argument("--work", default="/work/load-bench")
    ap.add_argument("--only", default="", help="comma-separated substrings of the runs to keep (default all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.md"))
    ap.add_argument("--from-log", default="", help="render the table from the JSON lines of an earlier run's log instead")
    args = ap.parse_args()
    if args.from_log:
        rows = [json.loads(line) for line in Path(args.from_log).read_text().splitlines() if line.startswith("{")]
        write_markdown(rows, Path(args.out), f"benchmarks/bench_load.py --sizes {args.sizes} --work {args.work}", args.only)
        return
    rows = []
    for size in args.sizes.split(","):
        models = Path(args.synth) / size
        if not (models / "lang" / "layerswap.json").exists():
            sys.exit(f"{models} is incomplete: python benchmarks/synthetic.py --params {size} --out {models}")
        model_bytes = folder_bytes(models / "base")
        work = Path(args.work) / size
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for label, cmd, out in commands(models, work):
            if args.only and not any(s in label for s in args.only.split(",")):
                continue
            print(f"[{size}] {label} ...", flush=True)
            res = measure(cmd)
            ok = res["rc"] == 0 and out.exists()
            res.update(size=size, label=label, model_gb=model_bytes / 1e9, ok=ok, cmd=" ".join(shlex.quote(c) for c in cmd[1:]))
            print(json.dumps(res), flush=True)
            rows.append(res)
            if out != models:
                shutil.rmtree(out, ignore_errors=True)
            write_markdown(rows, Path(args.out), " ".join(shlex.quote(a) for a in sys.argv), args.only)  # kept current run by run
        shutil.rmtree(work, ignore_errors=True)
    write_markdown(rows, Path(args.out), " ".join(shlex.quote(a) for a in sys.argv), args.only)


def write_markdown(rows: list[dict], path: Path, argv: str, only: str = "") -> None:
    by = {(r["size"], r["label"]): r for r in rows}
    lines = [
        "# Load benchmark: 1e9 and 3e9 synthetic triples" + (f" (runs matching: {only})" if only else ""),
        "",
        f"Command: `python {argv}`",
        "",
        "Inputs: `benchmarks/synthetic.py` triples (Llama-shaped, bf16, sharded); each run is its own subprocess under "
        "`/usr/bin/time -v` (peak RSS = maximum resident set size), one at a time, on 2 CPU cores shared with other jobs; "
        "outputs on the same disk, deleted after each run.",
        "",
        "Floors (the fastest plain way to do the same work): for `analyze`, reading every tensor of the three "
        "checkpoints once into float32 with `safe_open(...).get_tensor(k).float()`; for a swap or merge, a durable copy "
        "of one model's weight files (`shutil.copyfile`, then `fsync`). Same size, same session, one after the other.",
        "",
        f"| params | run | model GB | wall s | wall vs floor | peak RSS MiB | RSS / model size | RSS vs 1e9 | under {LIMIT_GIB:g} GiB | finished |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        small = by.get(("1e9", r["label"]))
        vs = f"{r['rss_mib'] / small['rss_mib']:.2f}x" if small and r["size"] != "1e9" else ""
        floor = by.get((r["size"], floor_of(r["label"])))
        vs_floor = "" if r["label"] in (READ_FLOOR, COPY_FLOOR) or floor is None else f"{r['wall_s'] / floor['wall_s']:.2f}x"
        lines.append(
            f"| {r['size']} | {r['label']} | {r['model_gb']:.2f} | {r['wall_s']:.1f} | {vs_floor} | {r['rss_mib']:.0f} | "
            f"{r['rss_mib'] * 2**20 / (r['model_gb'] * 1e9):.2f} | {vs} | {'yes' if r['rss_mib'] < LIMIT_GIB * 1024 else 'NO'} | "
            f"{'yes' if r['ok'] else 'NO: ' + (r['error'] or 'rc ' + str(r['rc']))} |"
        )
    lines += ["", "Each run's command (after `python`):", ""]
    lines += [f"- {r['size']} {r['label']}: `{r['cmd']}`" for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
