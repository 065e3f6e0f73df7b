"""Peak memory of each heavy command on Gemma 3 270M (1.07 GB in float32, 262,144-token vocabulary).

Each command runs in its own subprocess under ``/usr/bin/time -v`` (peak RSS = maximum resident set
size), one at a time, with the settings of the demo's stages: ``importance`` (two tasks, 16 examples
each, batch 4 x 128), ``finetune`` full and LoRA (the demo's math batch, 4 x 256, 3 steps), a TIES
``merge`` of two experts and ``sweep examples/sweep-cpu.yaml``. ``--baseline-src DIR`` also runs
each command with another checkout's ``layerswap`` package first on ``PYTHONPATH`` (for example
``git archive HEAD~3 layerswap | tar -x -C DIR``), side by side in the same run. The goal (issue 26):
no command above 4 GB (4 x the float32 model).

    python benchmarks/bench_memory.py --experts EXPERTS --data-dir ../shared/data [--baseline-src OLD]

``EXPERTS`` holds ``math/`` and ``sw/``: the CLI tour's experts (a full fine-tune and a LoRA adapter of the 270M).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import timed  # noqa: E402

ROOT = HERE.parent
MD = HERE / "results" / "memory_270m.md"
GOAL_MIB = 4e9 / 2**20
RUNS = ("importance", "finetune-full", "finetune-lora", "merge-ties", "sweep")


def commands(work: Path, experts: Path, data_dir: str) -> dict[str, list[str]]:
    """Each run's ``layerswap`` arguments (outputs under ``work``)."""
    ft = ["finetune", "--base", "gemma3-270m", "--data", "gsm8k?limit=192", "--data-dir", data_dir, "--steps", "3", "--batch-size", "4", "--seq-len", "256"]
    ties = work / "ties.yaml"
    ties.write_text(
        f"method: ties\nbase: gemma3-270m\nexperts: {{math: {experts / 'math'}, lang: {experts / 'sw'}}}\n"
        "params: {density: 0.2, weights: {math: 0.5, lang: 0.5}}\n"
    )
    sweep = work / "sweep.yaml"
    tour = yaml.safe_load((ROOT / "examples" / "sweep-cpu.yaml").read_text())
    sweep.write_text(yaml.safe_dump({**tour, "math": str(experts / "math"), "lang": str(experts / "sw")}))
    return {
        "importance": ["importance", "--base", "gemma3-270m", "--data", "math=gsm8k", "--data", "lang=ntrex:sw", "--examples", "16", "--batch-size", "4", "--seq-len", "128", "--data-dir", data_dir, "--no-plots", "--out", str(work / "importance")],
        "finetune-full": [*ft, "--method", "full", "--out", str(work / "ft-full")],
        "finetune-lora": [*ft, "--method", "lora", "--out", str(work / "ft-lora")],
        "merge-ties": ["merge", str(ties), "--out", str(work / "ties")],
        "sweep": ["sweep", str(sweep), "--data-dir", data_dir, "--out", str(work / "sweep")],
    }


def shown(args: list[str], work: Path, experts: Path) -> str:
    text = " ".join(args).replace(f"{work}/", "OUT/").replace(f"{experts}/", "EXPERTS/")
    return "layerswap " + text.replace("examples/sweep-cpu.yaml", "sweep.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", required=True, help="folder with math/ and sw/ (the CLI tour's experts of gemma3-270m)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--baseline-src", help="a folder holding another checkout's layerswap package, run first")
    ap.add_argument("--out", default=str(MD))
    args = ap.parse_args()
    experts = Path(args.experts).resolve()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown run {unknown[0]!r}: choose from {', '.join(RUNS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        cmds = commands(work, experts, args.data_dir)
        for name in runs:
            row = {"run": name, "command": shown(cmds[name], work, experts)}
            contenders = [("before", args.baseline_src)] if args.baseline_src else []
            for label, src in [*contenders, ("now", None)]:
                env = dict(os.environ)
                if src:
                    env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")])
                for p in work.iterdir():  # each contender writes the same outputs afresh
                    if p.is_dir():
                        shutil.rmtree(p)
                wall, peak, cpu = timed([sys.executable, "-c", "from layerswap.cli import main; main()", *cmds[name]], env=env)
                row[label] = (peak, wall)
                print(f"{name} ({label}): peak {peak:.0f} MiB, {wall:.0f} s", flush=True)
            rows.append(row)
    before = bool(args.baseline_src)
    lines = [
        "# Peak memory of each heavy command on Gemma 3 270M",
        "",
        f"Command: `python benchmarks/bench_memory.py --experts EXPERTS --data-dir ../shared/data --runs {','.join(runs)}"
        + (" --baseline-src OLD`" if before else "`"),
        "",
        "Gemma 3 270M (1.07 GB in float32, 262,144-token vocabulary), CPU, float32; EXPERTS: the CLI tour's experts "
        "(math: full fine-tune, 20 steps; sw: LoRA r=16 adapter, 20 steps). Each command in its own subprocess under `/usr/bin/time -v` (peak RSS = "
        "maximum resident set size, MiB = 2^20 bytes), one at a time, on 2 CPU cores (other jobs beside them slow them, not their peak); "
        "the goal is 4 GB (3815 MiB), 4 x the float32 model."
        + (" `before`: the same command with an older checkout's package (OLD) first on PYTHONPATH, in the same run." if before else ""),
        "",
        "| run | command | " + ("peak RSS MiB before | " if before else "") + "peak RSS MiB | under 4 GB | wall s |",
        "|---|---|" + ("---:|" if before else "") + "---:|---|---:|",
    ]
    for row in rows:
        peak, wall = row["now"]
        old = f"{row['before'][0]:.0f} | " if before else ""
        lines.append(f"| {row['run']} | `{row['command']}` | {old}{peak:.0f} | {'yes' if peak <= GOAL_MIB else 'no'} | {wall:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
