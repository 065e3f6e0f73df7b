"""SIGKILL at many moments: a merge, a fine-tune's final save and an analysis leave no output or a complete one.

How: one worker process imports layerswap, transformers and matplotlib once (and runs no torch op),
then forks one child per run. A child counts the write-side system calls on its output folder
(``open`` for writing, ``os.write``/``pwrite``/``copy_file_range``/``fsync``/``mkdir``/``rename``/
``replace``); a kill job SIGKILLs itself right before (or after) its k-th such call, or after a
random delay, or when a path appears. A traced run of the same command gives the number of calls,
so the kill points spread over the whole write, and its output is the reference.

After each kill the output path must be absent, or byte-identical to the previous complete output
(``--overwrite`` runs), or byte-identical to the reference: never anything else. A SIGKILLed run
cannot clean up, so its hidden ``.NAME.tmp-*`` sibling may remain; it never takes the output name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
KILL_SUMMARY = Path(os.environ.get("LAYERSWAP_FAULT_SUMMARY", "")) if os.environ.get("LAYERSWAP_FAULT_SUMMARY") else None

# --------------------------------------------------------------------------------------------
# The worker (runs as ``python tests/test_faults_kill.py worker JOBS RESULTS``)
# --------------------------------------------------------------------------------------------


def _markers(out: str) -> tuple[str, list[str]]:
    name = Path(out).name
    parent = str(Path(out).parent)
    return str(Path(out)), [f"{parent}/{name}/", f"{parent}/.{name}.tmp-", f"{parent}/.{name}.old-"]


def _install_hooks(job: dict[str, Any], trace: list[tuple[str, str]]) -> None:
    """Wrap the write-side calls; count those that touch the job's output (or ``watch`` paths)."""
    import builtins
    import io

    out_path, markers = _markers(job["out"])
    markers = markers + list(job.get("watch", []))
    kill = job.get("kill") or {}
    target = kill.get("event")
    when = kill.get("when", "before")
    state = {"n": -1}

    def matches(path: str) -> bool:
        return path == out_path or any(m in path for m in markers)

    def fd_path(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def event(point: str, path: str, after: bool) -> None:
        if not matches(path):
            return
        if not after:
            state["n"] += 1
            trace.append((point, path))
        if target is not None and state["n"] == target and (when == "after") == after:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(mod: Any, attr: str, point: str, path_of) -> None:  # noqa: ANN001
        real = getattr(mod, attr)

        def hooked(*args: Any, **kw: Any) -> Any:
            path = path_of(*args, **kw)
            if path is None:
                return real(*args, **kw)
            event(point, path, False)
            result = real(*args, **kw)
            event(point, path, True)
            return result

        setattr(mod, attr, hooked)

    def open_path(file: Any, mode: str = "r", *a: Any, **kw: Any) -> str | None:
        mode = kw.get("mode", mode)
        if isinstance(file, int) or not any(c in str(mode) for c in "wax+"):
            return None
        return os.path.abspath(os.fspath(file))

    real_open = io.open

    def hooked_open(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        path = open_path(file, mode, *a, **kw)
        if path is None:
            return real_open(file, mode, *a, **kw)
        event("open", path, False)
        fh = real_open(file, mode, *a, **kw)
        event("open", path, True)
        return fh

    io.open = builtins.open = hooked_open
    wrap(os, "write", "write", lambda fd, *a, **k: fd_path(fd) if fd > 2 else None)
    wrap(os, "pwrite", "pwrite", lambda fd, *a, **k: fd_path(fd))
    wrap(os, "copy_file_range", "copy_file_range", lambda src, dst, *a, **k: fd_path(dst))
    wrap(os, "fsync", "fsync", lambda fd, *a, **k: fd_path(fd if isinstance(fd, int) else fd.fileno()))
    wrap(os, "mkdir", "mkdir", lambda p, *a, **k: os.path.abspath(os.fspath(p)))
    wrap(os, "rename", "rename", lambda s, d, *a, **k: os.path.abspath(os.fspath(s)) + " -> " + os.path.abspath(os.fspath(d)))
    wrap(os, "replace", "replace", lambda s, d, *a, **k: os.path.abspath(os.fspath(s)) + " -> " + os.path.abspath(os.fspath(d)))


def _child(job: dict[str, Any], trace_file: str) -> None:
    """In the forked child: hooks, optional timer, run the CLI, write the trace, exit hard."""
    import threading

    log = os.open(job.get("log", os.devnull), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    trace: list[tuple[str, str]] = []
    _install_hooks(job, trace)
    kill = job.get("kill") or {}
    if "after_s" in kill:
        timer = threading.Timer(kill["after_s"], lambda: os.kill(os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    code = 0
    try:
        from layerswap.cli import main

        main(job["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 99
    with open(trace_file, "w") as fh:  # noqa: PTH123 (the hooked open ignores this path)
        json.dump(trace, fh)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker(jobs_file: str, results_file: str) -> None:
    os.environ["LAYERSWAP_QUIET"] = "1"
    os.environ.pop("LAYERSWAP_DEBUG", None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import layerswap.analysis  # noqa: F401
    import layerswap.cli  # noqa: F401
    import layerswap.evaluate  # noqa: F401
    import layerswap.finetune.train  # noqa: F401
    import layerswap.merge  # noqa: F401
    import layerswap.sweep  # noqa: F401

    jobs = json.loads(Path(jobs_file).read_text())
    results: list[dict[str, Any]] = []
    for i, job in enumerate(jobs):
        kill = dict(job.get("kill") or {})
        if "event_frac" in kill:  # a fraction of a traced job's events
            n = results[kill["of"]]["events"]
            kill["event"] = min(n - 1, int(kill["event_frac"] * n))
        if "after_frac" in kill:  # a fraction of a traced job's wall time
            kill["after_s"] = kill["after_frac"] * results[kill["of"]]["wall"]
        job = {**job, "kill": kill}
        trace_file = f"{results_file}.trace-{i}"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            _child(job, trace_file)
        status = None
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if "when_exists" in kill and Path(kill["when_exists"]).exists():
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        wall = time.perf_counter() - start
        trace = json.loads(Path(trace_file).read_text()) if Path(trace_file).exists() else None
        results.append(
            {
                "job": i,
                "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "events": len(trace) if trace is not None else None,
                "trace": trace if job.get("trace") else None,
                "wall": wall,
                "kill": kill,
            }
        )
    Path(results_file).write_text(json.dumps(results))


def run_worker(jobs: list[dict[str, Any]], tmp: Path, timeout: float = 600) -> list[dict[str, Any]]:
    """Run jobs in one worker process; return one result per job."""
    jobs_file, results_file = tmp / "jobs.json", tmp / "results.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ, LAYERSWAP_QUIET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "worker", str(jobs_file), str(results_file)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(tmp),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results_file.read_text())


# --------------------------------------------------------------------------------------------
# Checking what a kill left
# --------------------------------------------------------------------------------------------

VOLATILE = {"layerswap.json"}  # holds a creation time and timings: must parse, not match


def same_output(a: Path, b: Path) -> bool:
    """Same files; byte-identical except provenance JSON (must parse) and figures (must be non-empty)."""
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return False
    for rel in fa:
        pa, pb = a / rel, b / rel
        if pa.name in VOLATILE:
            json.loads(pa.read_text())
        elif pa.suffix in (".svg", ".png"):
            if pa.stat().st_size == 0:
                return False
        elif pa.read_bytes() != pb.read_bytes():
            return False
    return True


def judge(out: Path, complete: list[Path]) -> str:
    """'none' when nothing is at ``out``, else the index of the complete output it equals; raise otherwise."""
    if not out.exists():
        return "none"
    for i, ref in enumerate(complete):
        if same_output(out, ref):
            return f"complete#{i}"
    raise AssertionError(f"{out} exists but is neither absent nor a complete output: files {sorted(p.name for p in out.iterdir())}")


def leftovers(folder: Path, outs: set[str]) -> list[str]:
    """Everything in ``folder`` that is not a known output; each must be a hidden temporary sibling."""
    extra = [p.name for p in folder.iterdir() if p.name not in outs]
    for name in extra:
        assert name.startswith(".") and (".tmp-" in name or ".old-" in name), f"unexpected {name} beside the outputs"
    return extra


def spread(n: int, picks: int) -> list[int]:
    """``picks`` event indices spread over ``0..n-1`` (first and last included)."""
    return sorted({0, n - 1, *[round(i * (n - 1) / (picks - 1)) for i in range(picks)]})


def record(kind: str, **figures: Any) -> None:
    """Append figures for docs/reliability.md when LAYERSWAP_FAULT_SUMMARY names a JSONL file."""
    if KILL_SUMMARY is not None:
        with open(KILL_SUMMARY, "a") as fh:  # noqa: PTH123
            fh.write(json.dumps({"kind": kind, **figures}) + "\n")


def kill_campaign(tmp: Path, make_argv, previous: Path | None, *, event_picks: int, random_kills: int, overwrite_picks: int, seed: int, timeout: float = 600) -> dict[str, Any]:  # noqa: ANN001
    """Reference run, then kills spread over its write calls and at random times, fresh and over a previous output."""
    runs = tmp / "runs"
    runs.mkdir()
    jobs: list[dict[str, Any]] = [{"argv": make_argv(runs / "ref", False), "out": str(runs / "ref"), "trace": True, "log": str(tmp / "ref.log")}]
    first = run_worker(jobs, tmp, timeout)[0]
    assert first["code"] == 0 and not first["killed"], (tmp / "ref.log").read_text()[-3000:]
    n = first["events"]
    assert n and n >= 5, f"the traced run made only {n} write calls on its output"
    rng = random.Random(seed)
    kills: list[dict[str, Any]] = []
    for k in spread(n, event_picks):
        kills.append({"kill": {"event": k, "when": "before"}, "overwrite": False})
    kills.append({"kill": {"event": n - 1, "when": "after"}, "overwrite": False})
    for _ in range(random_kills):
        kills.append({"kill": {"after_s": rng.uniform(0.05, 1.0) * first["wall"]}, "overwrite": False})
    if previous is not None:
        for k in spread(n, overwrite_picks):
            kills.append({"kill": {"event": k, "when": "before"}, "overwrite": True})
    jobs = []
    for i, spec in enumerate(kills):
        out = runs / f"k{i}"
        if spec["overwrite"]:
            shutil.copytree(previous, out)
        jobs.append({"argv": make_argv(out, spec["overwrite"]), "out": str(out), "kill": spec["kill"], "log": str(tmp / f"k{i}.log")})
    results = run_worker(jobs, tmp, timeout)
    outcomes: dict[str, int] = {}
    for i, (spec, res) in enumerate(zip(kills, results)):
        out = runs / f"k{i}"
        complete = [runs / "ref"] + ([previous] if spec["overwrite"] else [])
        verdict = judge(out, complete)
        if not res["killed"]:  # a random delay past the end: the run must have finished cleanly
            assert res["code"] == 0 and verdict == "complete#0", f"job {i}: exit {res['code']}, {verdict}"
        if spec["kill"].get("when") == "after" and spec["kill"]["event"] == n - 1:
            assert verdict == "complete#0", "a kill after the final rename must leave the complete output"
        key = {"none": "no output", "complete#0": "new complete output", "complete#1": "previous output intact"}[verdict]
        outcomes[key] = outcomes.get(key, 0) + 1
    temps = leftovers(runs, {"ref", *[f"k{i}" for i in range(len(kills))]})
    killed = sum(r["killed"] for r in results)
    return {"write_calls": n, "kills": killed, "runs": len(kills), "outcomes": outcomes, "temp_siblings_left": len(temps)}


# --------------------------------------------------------------------------------------------
# The campaigns
# --------------------------------------------------------------------------------------------


def test_merge_killed_anywhere(tiny_experts, tmp_path):
    from layerswap.merge import merge, swap_config

    math_, lang = str(tiny_experts["math"]), str(tiny_experts["lang"])
    previous = tmp_path / "previous"
    merge(swap_config(math=math_, lang=lang, bottom=2, top=1), previous)

    def argv(out: Path, overwrite: bool) -> list[str]:
        cmd = ["swap", "--math", math_, "--lang", lang, "--bottom", "1", "--top", "1", "--transition", "1", "--out", str(out)]
        return cmd + (["--overwrite"] if overwrite else [])

    stats = kill_campaign(tmp_path, argv, previous, event_picks=8, random_kills=3, overwrite_picks=5, seed=1)
    record("merge", **stats)
    assert stats["kills"] >= 12
    assert stats["outcomes"].get("previous output intact", 0) >= 1 and stats["outcomes"].get("no output", 0) >= 1


def _train_file(tmp: Path) -> Path:
    path = tmp / "train.jsonl"
    rows = [{"prompt": f"Question: {a} + {b}?", "completion": f" {a + b}"} for a in range(4) for b in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune_argv(base: Path, data: Path, out: Path, *, steps: int = 2, save_steps: int = 100, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "finetune", "--base", str(base), "--data", f"{data}?prompt=prompt,completion=completion", "--steps", str(steps),
        "--batch-size", "2", "--seq-len", "32", "--save-steps", str(save_steps), "--train-layers", "1-3", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_finetune_final_save_killed_anywhere(tiny_experts, tmp_path):
    base, data = tiny_experts["base"], _train_file(tmp_path)
    previous = tmp_path / "previous"
    shutil.copytree(tiny_experts["math"], previous)

    def argv(out: Path, overwrite: bool) -> list[str]:
        return finetune_argv(base, data, out, extra=("--overwrite",) if overwrite else ())

    stats = kill_campaign(tmp_path, argv, previous, event_picks=6, random_kills=2, overwrite_picks=3, seed=2)
    record("finetune", **stats)
    assert stats["kills"] >= 8


def test_analysis_killed_anywhere(tiny_experts, tmp_path):
    base, math_, lang = (str(tiny_experts[k]) for k in ("base", "math", "lang"))

    def argv(out: Path, overwrite: bool) -> list[str]:
        cmd = ["analyze", "--base", base, "--expert", f"math={math_}", "--expert", f"lang={lang}", "--out", str(out)]
        return cmd + (["--overwrite"] if overwrite else [])

    stats = kill_campaign(tmp_path, argv, None, event_picks=7, random_kills=2, overwrite_picks=0, seed=3)
    record("analysis", **stats)
    assert stats["kills"] >= 7


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3])
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
