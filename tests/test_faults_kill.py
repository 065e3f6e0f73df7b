"""SIGKILL at many moments: a merge, a fine-tune's final save and an analysis leave no output or a complete one.

How: one worker process imports layerswap, transformers and matplotlib once (and runs no torch op),
then forks one child per run. A child counts the write-side system calls on its output folder
(``open`` for writing, ``os.write``/``pwrite``/``copy_file_range``/``fsync``/``mkdir``/``rename``/
``replace``); a kill job SIGKILLs itself right before (or after) its k-th such call, or its k-th
call on a given path, or after a random delay. A traced run of the same command gives the number of
calls, so the kill points spread over the whole write, and its output is the reference.

After each kill the output path must be absent, or byte-identical to the previous complete output
(``--overwrite`` runs), or byte-identical to the reference: never anything else. A SIGKILLed run
cannot clean up, so its hidden ``.NAME.tmp-*`` sibling may remain; it never takes the output name.

No test can pass on a kill that did not happen, or that landed after the work was done:
- a kill at a write call happens in the child, synchronously, at that call: no race with a fast
  finish, and every such kill must have fired;
- a kill after a random delay that finds the run already finished (or, for a sweep, with every
  candidate already stored) is retried with half the delay, and the tests assert it landed;
- kill-and-resume tests check what the kill left (no output, which checkpoint, how many stored
  candidates) before they compare the resumed result with an uninterrupted run.
Each test plans and runs its own jobs (the three fast ones share one worker whose plan never
depends on which tests ``-k`` selected), so any one of them can run alone.
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
    return str(Path(out)), [f"{parent}/{name}/", f"{parent}/.{name}.", f"{parent}/..{name}."]  # nested temp folders too


def _install_hooks(job: dict[str, Any], trace: list[tuple[str, str]]) -> None:
    """Wrap the write-side calls; count those that touch the job's output (or ``watch`` paths)."""
    import builtins
    import io

    out_path, markers = _markers(job["out"])
    markers = markers + list(job.get("watch", []))
    kill = job.get("kill") or {}
    target = kill.get("event")
    when = kill.get("when", "before")
    on_path, points = kill.get("path"), kill.get("points")  # kill at the k-th call on a path containing on_path
    state = {"n": -1, "hits": -1}

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
        if on_path is not None and on_path in path and (not points or point in points):
            if not after:
                state["hits"] += 1
            if state["hits"] == kill.get("index", 0) and (when == "after") == after:
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
    # Written then renamed: a random-delay kill may land while the trace is being written, and the
    # parent must then see no trace (the kill landed after the command ended), not half a file.
    with open(trace_file + ".tmp", "w") as fh:  # noqa: PTH123 (the hooked open ignores this path)
        json.dump(trace, fh)
    os.replace(trace_file + ".tmp", trace_file)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


#: How often a delayed kill that found the work done is retried, each time with half the delay.
RETRIES = 6


def _run_child(job: dict[str, Any], trace_file: str) -> tuple[int, float]:
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        _child(job, trace_file)
    _, status = os.waitpid(pid, 0)
    return status, time.perf_counter() - start


def _landed_mid_work(job: dict[str, Any], killed: bool) -> bool:
    """Whether a kill came while work was left: the run was killed and, where the job says how to
    tell (``unfinished``: fewer than ``below`` files match ``glob`` under the output), work remained."""
    unfinished = job.get("unfinished")
    if not killed or unfinished is None:
        return killed
    return len(list(Path(job["out"]).glob(unfinished["glob"]))) < unfinished["below"]


def _snapshot(paths: list[str]) -> dict[str, list[str] | None]:
    """The files under each path (relative, sorted), or None where the path does not exist."""
    return {p: sorted(str(f.relative_to(p)) for f in Path(p).rglob("*") if f.is_file()) if Path(p).exists() else None for p in paths}


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
    import layerswap.finetune.recipe  # noqa: F401
    import layerswap.merge  # noqa: F401
    import layerswap.sweep  # noqa: F401

    jobs = json.loads(Path(jobs_file).read_text())
    results: list[dict[str, Any]] = []
    for i, job in enumerate(jobs):
        kill = dict(job.get("kill") or {})
        if "event_at" in kill:  # a fraction of a traced job's write calls, 0.0 = first, 1.0 = last
            n = results[kill["of"]]["events"] or 1
            kill["event"] = round(kill["event_at"] * (n - 1))
        if "after_frac" in kill:  # a fraction of a traced job's wall time
            kill["after_s"] = kill["after_frac"] * results[kill["of"]]["wall"]
        job = {**job, "kill": kill}
        trace_file = f"{results_file}.trace-{i}"
        attempts = 0
        while True:
            attempts += 1
            status, wall = _run_child(job, trace_file)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            if "after_s" not in kill or _landed_mid_work(job, killed) or attempts == RETRIES:
                break
            # The delay outlived the work: start again from nothing, twice as early.
            assert not job.get("overwrite"), "a delayed kill over a previous output cannot be retried"
            for path in (Path(job["out"]), Path(job["out"] + ".work")):
                shutil.rmtree(path, ignore_errors=True)
            kill["after_s"] /= 2
        trace = json.loads(Path(trace_file).read_text()) if Path(trace_file).exists() else None
        results.append(
            {
                "job": i,
                "killed": killed,
                "mid_work": _landed_mid_work(job, killed),
                "attempts": attempts,
                "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "events": len(trace) if trace is not None else None,
                "trace": trace if job.get("trace") else None,
                "wall": wall,
                "kill": kill,
                "snapshot": _snapshot(job.get("snapshot", [])),
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


def record(kind: str, **figures: Any) -> None:
    """Append figures for docs/reliability.md when LAYERSWAP_FAULT_SUMMARY names a JSONL file."""
    if KILL_SUMMARY is not None:
        with open(KILL_SUMMARY, "a") as fh:  # noqa: PTH123
            fh.write(json.dumps({"kind": kind, **figures}) + "\n")


# --------------------------------------------------------------------------------------------
# The campaigns: all jobs run in one worker (its imports cost more than all the kills together)
# --------------------------------------------------------------------------------------------


class Plan:
    """Jobs for one worker, in groups; later jobs refer to earlier ones by index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: list[dict[str, Any]] = []
        self.groups: dict[str, list[int]] = {}

    def add(self, group: str, argv: list[str], out: Path, kill: dict[str, Any] | None = None, **meta: Any) -> int:
        self.jobs.append({"argv": argv, "out": str(out), "kill": kill, "log": str(out) + ".log", "trace": kill is None, **meta})
        self.groups.setdefault(group, []).append(len(self.jobs) - 1)
        return len(self.jobs) - 1


def plan_kills(plan: Plan, group: str, make_argv, previous: Path | None, *, event_picks: int, random_kills: int, overwrite_picks: int, seed: int) -> None:  # noqa: ANN001
    """A traced reference run, then kills spread over its write calls and at random times, fresh and over ``previous``."""
    runs = plan.root / group
    runs.mkdir()
    ref = plan.add(group, make_argv(runs / "ref", False), runs / "ref", role="ref")
    rng = random.Random(seed)
    kills: list[tuple[dict[str, Any], bool]] = [({"event_at": i / (event_picks - 1), "of": ref}, False) for i in range(event_picks)]
    kills.append(({"event_at": 1.0, "of": ref, "when": "after"}, False))
    kills += [({"after_frac": rng.uniform(0.05, 1.0), "of": ref}, False) for _ in range(random_kills)]
    kills += [({"event_at": i / max(1, overwrite_picks - 1), "of": ref}, True) for i in range(overwrite_picks)]
    for i, (kill, overwrite) in enumerate(kills):
        out = runs / f"k{i}"
        if overwrite:
            shutil.copytree(previous, out)
        plan.add(group, make_argv(out, overwrite), out, kill, role="kill", overwrite=overwrite)


def judge_kills(plan: Plan, results: list[dict[str, Any]], group: str, previous: Path | None) -> dict[str, Any]:
    idx = plan.groups[group]
    ref_job, ref = plan.jobs[idx[0]], results[idx[0]]
    assert ref["code"] == 0 and not ref["killed"], Path(ref_job["log"]).read_text()[-3000:]
    n = ref["events"]
    assert n and n >= 5, f"the traced run made only {n} write calls on its output"
    ref_out = Path(ref_job["out"])
    outcomes: dict[str, int] = {}
    for i in idx[1:]:
        job, res = plan.jobs[i], results[i]
        out = Path(job["out"])
        # A kill at a write call fires in the child at that call; a delayed one was retried earlier until it landed.
        assert res["killed"], f"{out}: the kill {res['kill']} never happened (exit {res['code']}, {res['attempts']} tries)"
        verdict = judge(out, [ref_out] + ([previous] if job["overwrite"] else []))
        if res["kill"].get("when") == "after" and res["kill"].get("event") == n - 1:
            assert verdict == "complete#0", "a kill after the final rename must leave the complete output"
        key = {"none": "no output", "complete#0": "new complete output", "complete#1": "previous output intact"}[verdict]
        outcomes[key] = outcomes.get(key, 0) + 1
    runs = ref_out.parent
    temps = leftovers(runs, {p.name for p in runs.iterdir() if not p.name.startswith(".")})
    return {
        "write_calls": n,
        "kills": sum(results[i]["killed"] for i in idx[1:]),
        "runs": len(idx) - 1,
        "outcomes": outcomes,
        "temp_siblings_left": len(temps),
    }


def _train_file(tmp: Path) -> Path:
    path = tmp / "train.jsonl"
    rows = [{"prompt": f"Question: {a} + {b}?", "completion": f" {a + b}"} for a in range(4) for b in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def finetune_argv(base: Path, data: Path, out: Path, *, steps: int = 1, save_steps: int = 100, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "finetune", "--base", str(base), "--data", f"{data}?prompt=prompt,completion=completion", "--steps", str(steps),
        "--batch-size", "2", "--seq-len", "32", "--save-steps", str(save_steps), "--train-layers", "1-3", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


SWEEP_CANDIDATES = ["swap-b1-u1", "swap-b2-u1", "base", "math", "ties-d0.2"]  # what tiny_sweep_config evaluates


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, tiny_experts):
    """The merge, fine-tune-save and analysis kills, run in one worker: (plan, results, extras).

    The plan is the same whatever ``-k`` selects: each of the three tests reads only its own group.
    """
    from layerswap.merge import merge, swap_config

    root = tmp_path_factory.mktemp("kills")
    plan = Plan(root)
    base, math_, lang = (tiny_experts[k] for k in ("base", "math", "lang"))
    extras: dict[str, Any] = {}

    # A merge (swap with a transition layer: computed tensors and raw byte copies).
    prev_merge = root / "previous-merge"
    merge(swap_config(math=str(math_), lang=str(lang), bottom=2, top=1), prev_merge)
    extras["previous-merge"] = prev_merge

    def merge_argv(out: Path, overwrite: bool) -> list[str]:
        cmd = ["swap", "--math", str(math_), "--lang", str(lang), "--bottom", "1", "--top", "1", "--transition", "1", "--out", str(out)]
        return cmd + (["--overwrite"] if overwrite else [])

    plan_kills(plan, "merge", merge_argv, prev_merge, event_picks=8, random_kills=3, overwrite_picks=5, seed=1)

    # A fine-tune's final save (1 step, no intermediate checkpoint), fresh and over a previous model.
    data = _train_file(root)
    extras["previous-finetune"] = math_

    def ft_argv(out: Path, overwrite: bool) -> list[str]:
        return finetune_argv(base, data, out, extra=("--overwrite",) if overwrite else ())

    plan_kills(plan, "finetune", ft_argv, math_, event_picks=5, random_kills=1, overwrite_picks=2, seed=2)

    # An analysis (tables, boundaries.yaml, figures).
    def an_argv(out: Path, overwrite: bool) -> list[str]:
        return ["analyze", "--base", str(base), "--expert", f"math={math_}", "--expert", f"lang={lang}", "--out", str(out)]

    plan_kills(plan, "analysis", an_argv, None, event_picks=5, random_kills=1, overwrite_picks=0, seed=3)

    results = run_worker(plan.jobs, root, timeout=900)
    return plan, results, extras


def test_merge_killed_anywhere(campaign):
    plan, results, extras = campaign
    stats = judge_kills(plan, results, "merge", extras["previous-merge"])
    record("merge", **stats)
    assert stats["kills"] == stats["runs"] == 17
    assert stats["outcomes"].get("previous output intact", 0) >= 1 and stats["outcomes"].get("no output", 0) >= 1


def test_finetune_final_save_killed_anywhere(campaign):
    plan, results, extras = campaign
    stats = judge_kills(plan, results, "finetune", extras["previous-finetune"])
    record("finetune", **stats)
    assert stats["kills"] == stats["runs"] == 9


def test_analysis_killed_anywhere(campaign):
    plan, results, _ = campaign
    stats = judge_kills(plan, results, "analysis", None)
    record("analysis", **stats)
    assert stats["kills"] == stats["runs"] == 7


def _weights(folder: Path) -> dict[str, Any]:
    from layerswap.testing import state_dict_of

    return dict(state_dict_of(folder))


def _log(plan: Plan, i: int) -> str:
    return Path(plan.jobs[i]["log"]).read_text()[-3000:]


@pytest.mark.slow
def test_finetune_resumes_from_last_checkpoint(tmp_path, tiny_experts):
    """6 steps with a checkpoint every 2, killed mid-save of checkpoint 4 and after checkpoint 4, then resumed.

    Each kill fires in the child at a write call (no race with the training): the first right before
    checkpoint 4's ``trainer_state.json`` (the Trainer writes it last, so checkpoint 4 is incomplete and
    the resume must start from 2), the second at the first write of checkpoint 6 (resume from 4).
    """
    import torch

    plan = Plan(tmp_path)
    base = tiny_experts["base"]
    data = _train_file(tmp_path)
    whole = plan.add("ft-resume", finetune_argv(base, data, tmp_path / "whole", steps=6, save_steps=2), tmp_path / "whole", role="ref")
    expected = {}
    for name, write, resume_step in (("mid-save", "checkpoint-4/trainer_state.json", 2), ("after-save", "checkpoint-6", 4)):
        out = tmp_path / name
        kill = {"path": f"{out}.work/{write}"}
        argv = finetune_argv(base, data, out, steps=6, save_steps=2)
        k = plan.add("ft-resume", argv, out, kill, watch=[f"{out}.work/"], snapshot=[str(out), f"{out}.work"], point=name)
        r = plan.add("ft-resume", [*argv, "--resume"], out, role="resume", point=name)
        expected[name] = (k, r, resume_step)
    results = run_worker(plan.jobs, tmp_path)

    assert results[whole]["code"] == 0, _log(plan, whole)
    reference = _weights(tmp_path / "whole")
    for name, (k, r, resume_step) in expected.items():
        left = results[k]["snapshot"]
        assert results[k]["killed"], f"{name}: the kill never happened (exit {results[k]['code']})\n{_log(plan, k)}"
        assert left[plan.jobs[k]["out"]] is None, f"{name}: the killed run left an output"
        work = left[plan.jobs[k]["out"] + ".work"]
        assert f"checkpoint-{resume_step}/trainer_state.json" in work, f"{name}: {work}"
        assert f"checkpoint-{resume_step + 2}/trainer_state.json" not in work, f"{name}: {work}"
        assert results[r]["code"] == 0, _log(plan, r)
        out = Path(plan.jobs[r]["out"])
        prov = json.loads((out / "layerswap.json").read_text())
        assert (prov["resumed_from_step"], prov["steps"]) == (resume_step, 6), name
        got = _weights(out)
        assert got.keys() == reference.keys()
        for tensor_name, tensor in reference.items():
            torch.testing.assert_close(got[tensor_name], tensor, rtol=1e-5, atol=1e-6, msg=lambda m, n=f"{name} {tensor_name}": f"{n}: {m}")
    record("finetune-resume", resumes=len(expected), kills=len(expected))


@pytest.mark.slow
def test_sweep_resumes_with_identical_results(tmp_path, tiny_experts, data_dir):
    """A sweep killed before storing its third candidate, and at a random moment with candidates left, then rerun.

    The first kill fires in the child at the rename that would store the third result; the second
    comes after a random delay and is retried earlier whenever it found all five candidates stored.
    """
    import pandas as pd
    import yaml
    from conftest import tiny_sweep_config

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(tiny_sweep_config(tiny_experts, data_dir, max_new_tokens=8)))
    plan = Plan(tmp_path)
    whole = plan.add("sweep", ["sweep", str(cfg), "--out", str(tmp_path / "whole")], tmp_path / "whole", role="ref")
    stored = {"glob": "candidates/*.json", "below": len(SWEEP_CANDIDATES)}
    pairs = []
    for out, kill in (
        (tmp_path / "k1", {"path": f"{tmp_path / 'k1'}/candidates/", "points": ["replace", "rename"], "index": 5}),  # renames per candidate: its scores CSV, then its JSON
        (tmp_path / "k2", {"after_frac": random.Random(4).uniform(0.4, 0.8), "of": whole}),
    ):
        argv = ["sweep", str(cfg), "--out", str(out)]
        k = plan.add("sweep", argv, out, kill, role="kill", unfinished=stored, snapshot=[str(out)])
        pairs.append((k, plan.add("sweep", argv, out, role="resume")))
    results = run_worker(plan.jobs, tmp_path)

    assert results[whole]["code"] == 0, _log(plan, whole)
    reference = pd.read_csv(tmp_path / "whole" / "results.csv")
    assert sorted(set(reference["candidate"])) == sorted(SWEEP_CANDIDATES)
    cols = ["candidate", "method", "parameters", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    for k, r in pairs:
        out, res = plan.jobs[k]["out"], results[k]
        assert res["killed"], f"{out}: the kill {res['kill']} never happened (exit {res['code']})\n{_log(plan, k)}"
        left = res["snapshot"][out] or []
        done = [f for f in left if f.startswith("candidates/") and f.endswith(".json")]
        assert res["mid_work"] and len(done) < len(SWEEP_CANDIDATES) and "results.csv" not in left, f"{out}: killed after the work: {left}"
        if "path" in res["kill"]:
            assert len(done) == 2, f"{out}: expected two stored candidates, found {done}"
        assert results[r]["code"] == 0, _log(plan, r)
        again = pd.read_csv(Path(out) / "results.csv")
        pd.testing.assert_frame_equal(again[cols], reference[cols])
        # the paired comparisons are recomputed from the stored per-example scores: identical after a resume
        pd.testing.assert_frame_equal(pd.read_csv(Path(out) / "comparisons.csv"), pd.read_csv(tmp_path / "whole" / "comparisons.csv"))
    record("sweep-resume", resumes=len(pairs), kills=len(pairs), retries=sum(results[k]["attempts"] - 1 for k, _ in pairs))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3])
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
