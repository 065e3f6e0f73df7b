"""Merge speed and memory: layerswap vs mergekit-yaml vs a plain copy, side by side in one run.

Every contender runs in its own subprocess under ``/usr/bin/time -v`` (wall time and peak RSS).
The layer swap is timed against ``mergekit-yaml`` on the equivalent passthrough config (emitted
by ``--emit-mergekit``) over the same files, against a plain copy of the same bytes, and against
a durable copy (the same copy, then ``fsync``: what layerswap does before it renames an output into
place). The swap contenders run ``--repeats`` times, interleaved in a rotating order, each after
``sync`` and a pause so that no run pays for the previous one's dirty pages; the table gives medians.

    python benchmarks/bench_merge.py --models /work/synth/1e9 --methods swap,ties,della,slerp

Each merge method runs ``--method-repeats`` rounds (every method once per round) against ``mergekit-yaml``
(at its fastest CPU settings) on the YAML that ``--emit-mergekit`` writes, with parameters both tools state
the same way (``BENCH_PARAMS``). Each sample is appended to ``<out>.partial.txt`` as it lands;
``--table-from <out>.partial.txt`` prints the medians of a run stopped early.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds user + system) of a command run under /usr/bin/time -v.

    CPU time is what a contender computed, the fairer number on a machine whose cores other jobs share."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    return wall, (int(m.group(1)) / 1024 if m else float("nan")), cpu


def copy_cmd(src: Path, dst: Path, *, durable: bool = False) -> list[str]:
    code = (
        "import os,shutil,sys,pathlib;d=pathlib.Path(sys.argv[2]);d.mkdir(parents=True);"
        "fs=[shutil.copyfile(p,d/p.name) for p in sorted(pathlib.Path(sys.argv[1]).glob('*.safetensors'))]"
    )
    if durable:
        code += ";[os.fsync(f.fileno()) for f in [open(p,'rb') for p in fs]]"
    return [sys.executable, "-c", code, str(src), str(dst)]


#: Each method's parameters in the benchmark: ones mergekit states the same way (DARE/DELLA rescale l1),
#: so mergekit-yaml computes the same merge from the emitted YAML ("DENSITY" is --density).
BENCH_PARAMS: dict[str, dict] = {
    "linear": {"weights": {"math": 0.5, "lang": 0.5}},
    "task_arithmetic": {"weights": {"math": 1.0, "lang": 1.0}},
    "lines": {"weights": {"math": 1.0, "lang": 1.0}, "lines": {"alpha": 0.5, "beta": 0.5}},
    "ties": {"density": "DENSITY", "weights": {"math": 0.5, "lang": 0.5}},
    "dare_ties": {"density": "DENSITY", "weights": {"math": 0.5, "lang": 0.5}, "rescale": "l1"},
    "dare_linear": {"density": "DENSITY", "weights": {"math": 0.5, "lang": 0.5}, "rescale": "l1"},
    "della": {"density": "DENSITY", "epsilon": 0.1, "weights": {"math": 0.5, "lang": 0.5}, "rescale": "l1"},
    "della_linear": {"density": "DENSITY", "epsilon": 0.1, "weights": {"math": 0.5, "lang": 0.5}, "rescale": "l1"},
    "breadcrumbs": {"density": "DENSITY", "gamma": 0.01, "weights": {"math": 0.5, "lang": 0.5}},
    "breadcrumbs_ties": {"density": "DENSITY", "gamma": 0.01, "weights": {"math": 0.5, "lang": 0.5}},
    "sce": {"select_topk": "DENSITY"},
    "model_stock": {},
    "slerp": {"t": 0.5},
    "nuslerp": {"weights": {"math": 0.5, "lang": 0.5}},
    "graded_swap": {"width": 3.0},
}
NO_BASE = {"linear", "slerp", "graded_swap"}
LEGACY = {"dare": "dare_ties"}
#: What ``--emit-mergekit`` writes, without running the merge itself.
EMIT = (
    "import sys; from layerswap.merge import load_merge_config, open_merge; "
    "from layerswap.merge.mergekit import write_mergekit_yaml; c = load_merge_config(sys.argv[1]); p = open_merge(c).plan; "
    "write_mergekit_yaml(c, p, sys.argv[2], num_layers=p.num_layers)"
)
#: mergekit's fastest CPU settings here: asynchronous shard writes; no tokenizer copy (layerswap copies none either).
MERGEKIT_BEST = ["--async-write", "--no-copy-tokenizer"]


def method_table(method_runs: dict[str, dict[str, list[tuple[float, float, float]]]]) -> list[str]:
    """The methods' table: medians of each tool's (wall s, peak RSS MiB, CPU s) samples, and their ratios."""
    lines = ["| method | runs | layerswap s | mergekit s | time ratio | layerswap CPU s | mergekit CPU s | CPU ratio | layerswap MiB | mergekit MiB | memory ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, runs in method_runs.items():
        ours, theirs = (next(v for k, v in runs.items() if k.startswith(tool)) for tool in ("layerswap", "mergekit"))
        if not ours or not theirs:
            continue
        ow, tw = statistics.median(w for w, *_ in ours), statistics.median(w for w, *_ in theirs)
        orss, trss = statistics.median(r for _, r, *_ in ours), statistics.median(r for _, r, *_ in theirs)
        oc, tc = statistics.median(c for *_, c in ours), statistics.median(c for *_, c in theirs)
        lines.append(f"| {method} | {min(len(ours), len(theirs))} | {ow:.1f} | {tw:.1f} | {ow / tw:.2f} | {oc:.1f} | {tc:.1f} | {oc / tc:.2f} "
                     f"| {orss:.0f} | {trss:.0f} | {orss / trss:.2f} |")
    return lines


def table_from_partial(path: Path) -> list[str]:
    """The methods' table from a partial file (one sample a line), e.g. of a run stopped early."""
    runs: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for line in path.read_text().splitlines():
        method, name, wall, rss, cpu = line.split("\t")
        runs.setdefault(method, {"layerswap merge": [], "mergekit-yaml": []})
        runs[method]["layerswap merge" if name.startswith("layerswap") else "mergekit-yaml"].append((float(wall), float(rss), float(cpu)))
    return method_table(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("/work/synth/1e9"), help="folder with base/, math/, lang/")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_merge"), help="scratch folder for outputs")
    ap.add_argument("--methods", default="swap," + ",".join(BENCH_PARAMS), help="comma list: swap and merge method names")
    ap.add_argument("--method-repeats", type=int, default=3, help="runs of each method contender (median reported)")
    ap.add_argument("--bottom", type=int, default=5)
    ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5, help="runs of each swap contender (median reported)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "merge.md")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PYTHONPATH",
                    help="also time the swap with layerswap imported from PYTHONPATH (e.g. a copy of the tree before a change); repeat")
    ap.add_argument("--skip-mergekit", action="store_true", help="leave mergekit out of the swap rows")
    ap.add_argument("--table-from", type=Path, metavar="PARTIAL", help="print the methods' table from a partial file and exit")
    args = ap.parse_args()
    if args.table_from is not None:
        print("\n".join(table_from_partial(args.table_from)))
        return
    base, math_, lang = (args.models / k for k in ("base", "math", "lang"))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, LAYERSWAP_QUIET="1")
    layerswap = [str(Path(sys.executable).parent / "layerswap")]
    mergekit = [str(Path(sys.executable).parent / "mergekit-yaml")]
    nbytes = sum(p.stat().st_size for p in math_.glob("*.safetensors"))
    # Warm the page cache equally for everyone (read each input once).
    for folder in (base, math_, lang):
        for p in folder.glob("*.safetensors"):
            with open(p, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    rows: list[tuple[str, str, float, float]] = []
    spread: dict[str, tuple[float, float]] = {}
    methods = args.methods.split(",")

    def clean(*paths: Path) -> None:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    if "swap" in methods:
        mk_yaml = work / "swap.mergekit.yaml"
        contenders = {
            "plain copy of the same bytes (shutil.copyfile)": copy_cmd(math_, work / "out"),
            "durable copy (shutil.copyfile, then fsync)": copy_cmd(math_, work / "out", durable=True),
            f"layerswap swap (b={args.bottom}, u={args.top})": [
                *layerswap, "swap", "--math", str(math_), "--lang", str(lang), "--bottom", str(args.bottom),
                "--top", str(args.top), "--out", str(work / "out"),
            ],
            "mergekit-yaml passthrough (emitted YAML)": [*mergekit, str(mk_yaml), str(work / "out")],
        }
        env_of: dict[str, dict[str, str]] = {}
        for variant in args.variant:
            vname, _, vpath = variant.partition("=")
            key = f"layerswap swap, {vname} (b={args.bottom}, u={args.top})"
            contenders[key] = contenders[f"layerswap swap (b={args.bottom}, u={args.top})"]
            env_of[key] = dict(env, PYTHONPATH=vpath)
        if args.skip_mergekit:
            contenders.pop("mergekit-yaml passthrough (emitted YAML)")
        # mergekit reads the YAML that layerswap emits: write it once before the timed runs.
        emit = [*contenders[f"layerswap swap (b={args.bottom}, u={args.top})"], "--emit-mergekit", str(mk_yaml)]
        subprocess.run(emit, env=env, check=True, capture_output=True)
        clean(work / "out")
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
        names = list(contenders)
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate: nobody always follows mergekit
                os.sync()
                time.sleep(1)  # let the file system finish discarding the previous output
                runs[name].append(timed(contenders[name], env_of.get(name, env)))
                clean(work / "out")
        for name, samples in runs.items():
            walls = sorted(w for w, *_ in samples)
            rows.append(("layer swap", name, statistics.median(walls), max(r for _, r, *_ in samples)))
            spread[name] = (walls[0], walls[-1])
    method_runs: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    prepared: dict[str, dict[str, list[str]]] = {}
    for key in methods:
        if key == "swap":
            continue
        method = LEGACY.get(key, key)
        if method not in BENCH_PARAMS:
            raise SystemExit(f"unknown --methods entry {key!r}: use swap or one of {', '.join(BENCH_PARAMS)}")
        params = {k: (args.density if v == "DENSITY" else v) for k, v in BENCH_PARAMS[method].items()}
        if method == "graded_swap":  # the cut scaled to the model's depth (a 4-layer model has no room for 5 + 2)
            depth = int(json.loads((base / "config.json").read_text())["num_hidden_layers"])
            params.update(bottom=max(1, depth // 4), top=max(1, depth // 8))
        cfg = {"method": method, "experts": {"math": str(math_), "lang": str(lang)}, "params": params}
        if method not in NO_BASE:
            cfg["base"] = str(base)
        cfg_path = work / f"{method}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        mk_yaml = work / f"{method}.mergekit.yaml"
        # mergekit reads the YAML that layerswap emits (no '# note:' lines: the same formula): write it untimed.
        subprocess.run([sys.executable, "-c", EMIT, str(cfg_path), str(mk_yaml)], env=env, check=True, capture_output=True)
        if "# note" in mk_yaml.read_text():
            raise SystemExit(f"{method}: the emitted YAML carries a note, so mergekit would compute something else")
        prepared[method] = {
            "layerswap merge": [*layerswap, "merge", str(cfg_path), "--out", str(work / "ours")],
            "mergekit-yaml " + " ".join(MERGEKIT_BEST): [*mergekit, str(mk_yaml), str(work / "theirs"), *MERGEKIT_BEST],
        }
        method_runs[method] = {name: [] for name in prepared[method]}
    # Rounds: every method once per round (a run stopped early still has each method measured), the
    # two tools alternating who goes first; each sample is appended to the partial file as it lands.
    partial = args.out.with_suffix(".partial.txt")
    for i in range(args.method_repeats):
        for method, contenders in prepared.items():
            names = list(contenders)
            for name in names[i % 2:] + names[: i % 2]:
                clean(work / "ours", work / "theirs")
                os.sync()
                time.sleep(1)
                sample = timed(contenders[name], env)
                method_runs[method][name].append(sample)
                with partial.open("a") as fh:
                    fh.write(f"{method}\t{name}\t{sample[0]:.2f}\t{sample[1]:.0f}\t{sample[2]:.2f}\n")
        clean(work / "ours", work / "theirs")
    for method, runs in method_runs.items():
        for name, samples in runs.items():
            walls = sorted(w for w, *_ in samples)
            rows.append((method, name, statistics.median(walls), statistics.median(r for _, r, *_ in samples)))
            spread[f"{method}/{name}"] = (walls[0], walls[-1])

    cmd = "python benchmarks/bench_merge.py " + " ".join(sys.argv[1:])
    lines = [
        "# Merge benchmark",
        "",
        f"Command: `{cmd}`",
        "",
        f"Inputs: `{args.models}` (base/math/lang, {nbytes / 1e9:.2f} GB per model, bf16, sharded); "
        f"page cache warmed for all inputs; each contender in its own subprocess under `/usr/bin/time -v`; "
        f"{os.cpu_count()} CPU cores (shared with other jobs). Outputs on the same disk. Layer swap rows: median "
        f"of {args.repeats} runs interleaved in rotating order (min-max in brackets), each after `sync` and 1 s.",
        "",
        "| merge | contender | wall s | peak RSS MiB | time ratio |",
        "|---|---|---:|---:|---:|",
    ]
    ref: dict[str, float] = {}
    for group, name, w, _ in rows:
        if group == "layer swap" and name.startswith("layerswap"):
            ref.setdefault(group, w)
    for group, name, w, r in rows:
        ratio = ""
        if group in ref and not name.startswith("layerswap"):
            ratio = f"layerswap / this = {ref[group] / w:.2f}"
        elif group in ref and name.startswith("layerswap swap, "):
            ratio = f"layerswap / this = {ref[group] / w:.2f}"
        wall = f"{w:.2f} [{spread[name][0]:.2f}-{spread[name][1]:.2f}]" if name in spread else f"{w:.1f}"
        lines.append(f"| {group} | {name} | {wall} | {r:.0f} | {ratio} |")
    ours_name = next((n for n in spread if n.startswith("layerswap")), None)
    if ours_name is not None:
        fastest = {n: lo for n, (lo, _) in spread.items()}
        lines.append("")
        lines.append(
            "Layer swap, fastest run against fastest run: "
            + "; ".join(f"{fastest[ours_name] / lo:.2f}x {n}" for n, lo in fastest.items() if n != ours_name)
        )
    if method_runs:
        lines += ["", "Methods, layerswap against mergekit on the same files (medians; wall time, CPU time and peak RSS ratios):", "",
                  *method_table(method_runs)]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
