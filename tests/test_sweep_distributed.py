"""Sharded sweeps: ``accelerate launch`` with two CPU processes (gloo) gives the single-process results.

Each process loads the model once and runs every second candidate (exhaustive search) or every
second unit of each halving round, and the finalists likewise, into one resumable store; a barrier
ends each round and precedes the report, which the main process alone writes. Compared with one
process: the same ``results.csv`` (timing columns aside), the same rounds, the same files. A
two-process run SIGKILLed mid-way resumes under two processes to the same results.

The fast test runs the sharding logic with two threads (a ``threading.Barrier`` as the process
group) on injected scores; the launches (``examples/accelerate/ddp-2.yaml``, two fresh Python
processes each, about 15-30 s on two cores) are ``slow``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_finetune_distributed import launch
from test_sweep_halving import _block, _cands, _target
from test_sweep_halving import _config as _halving_config
from test_sweep_loop import _config as _loop_config
from test_sweep_loop import _fake_eval

from layerswap.sweep import ResultStore, build_candidates, run_candidates, settings_key
from layerswap.sweep.search import run_halving_sweep
from layerswap.sweep.shard import Shard

#: ``results.csv`` without its timing columns (which differ from run to run).
TIMES = ["time", "merge_time"]


class _Threads:
    """A stand-in for accelerate's state: ``wait_for_everyone`` is a barrier among threads."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=60)


def _two_threads(work):  # noqa: ANN001, ANN202
    """Run ``work(shard)`` as ranks 0 and 1 of 2 concurrently; returns their results by rank."""
    barrier = threading.Barrier(2)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = work(Shard(rank, 2, _Threads(barrier)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_sharded_candidates_and_rounds_equal_one_process(tmp_path):
    """Two ranks over one store: each runs its share (no unit twice), both return the one-process table."""
    cfg = _loop_config(tmp_path, candidates={"grid": {"bottom": [1, 2, 3], "top": [1, 2], "transition": [0]}})
    cands = build_candidates(cfg, num_layers=12)
    evaluate = _fake_eval()
    one = run_candidates(cands, ResultStore(tmp_path / "one", settings_key(cfg)), lambda c: 0.0, evaluate)
    ran: dict[int, list[str]] = {0: [], 1: []}

    def exhaustive(shard: Shard) -> pd.DataFrame:
        def counting(cand):  # noqa: ANN001, ANN202
            ran[shard.rank].append(cand.name)
            return evaluate(cand)

        return run_candidates(cands, ResultStore(tmp_path / "two", settings_key(cfg)), lambda c: 0.0, counting, sharding=shard)

    two = _two_threads(exhaustive)
    assert sorted(ran[0] + ran[1]) == sorted(c.name for c in cands) and not set(ran[0]) & set(ran[1]) and ran[1]
    for rank in (0, 1):
        pd.testing.assert_frame_equal(one.drop(columns=TIMES), two[rank].drop(columns=TIMES))

    hcfg = _halving_config()
    hcands = _cands(hcfg)
    full, _, race = run_halving_sweep(hcfg, hcands, tmp_path / "h1", lambda c: 0.0, _block, _target, log=lambda s: None)
    units: dict[int, list[str]] = {0: [], 1: []}

    def halving(shard: Shard):  # noqa: ANN202
        def counting(cand, unit):  # noqa: ANN001, ANN202
            units[shard.rank].append(unit.name)
            return _block(cand, unit)

        return run_halving_sweep(
            hcfg, hcands, tmp_path / "h2", lambda c: 0.0, counting, _target, log=lambda s: None, sharding=shard
        )

    both = _two_threads(halving)
    assert not set(units[0]) & set(units[1]) and len(units[0]) + len(units[1]) == sum(len(d.entered) for d in race.rounds)
    for rank in (0, 1):
        table, _, race_r = both[rank]
        pd.testing.assert_frame_equal(full.drop(columns=TIMES), table.drop(columns=TIMES))
        pd.testing.assert_frame_equal(race.table(), race_r.table())
    for r in range(len(race.rounds)):
        assert (tmp_path / "h1" / "halving" / f"round-{r}.json").read_text() == (
            tmp_path / "h2" / "halving" / f"round-{r}.json"
        ).read_text()
    assert sorted(p.name for p in (tmp_path / "h2").rglob("*")) == sorted(p.name for p in (tmp_path / "h1").rglob("*"))


def test_shard_shares_and_spots_a_lone_cpu_launch(monkeypatch):
    assert Shard(1, 3).mine(list("abcdefg")) == ["b", "e"] and Shard().mine([1, 2]) == [1, 2]
    assert Shard().is_main and not Shard(1, 2).is_main and Shard(1, 2).describe() == "process 2 of 2"
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)
    assert Shard.from_environment() == Shard() and not Shard.launched_alone()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert Shard.launched_alone()  # accelerate launch --cpu --num_processes 2: one process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not Shard.launched_alone() and Shard.from_environment() == Shard()


# ---------------------------------------------------------------------------- two processes, tiny models

HALVING = {
    "limit": 4,
    "screen": "proxy",
    "target": "flores",
    "finalists": 1,
    "candidates": {
        "search": "halving",
        "halving": {"block": 2},
        "grid": {"bottom": [1, 2], "top": [1], "transition": [0]},
        "baselines": ["base", "math", "lang"],
    },
}


def _write_config(tmp_path: Path, experts, data_dir, name: str, **overrides) -> Path:  # noqa: ANN001
    from conftest import tiny_sweep_config

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_config(experts, data_dir, **overrides)))
    return path


def _one_process(config: Path, out: Path) -> pd.DataFrame:
    from layerswap.sweep import load_sweep_config, run_sweep

    run_sweep(load_sweep_config(config), out, log=lambda s: None, sharding=Shard())
    return pd.read_csv(out / "results.csv")


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def _assert_same_sweep(one: Path, two: Path) -> None:
    a, b = pd.read_csv(one / "results.csv"), pd.read_csv(two / "results.csv")
    pd.testing.assert_frame_equal(a.drop(columns=TIMES), b.drop(columns=TIMES))
    assert _files(one) == _files(two)  # no temporary file left, nothing written twice under another name
    if (one / "halving").exists():
        for r in sorted((one / "halving").glob("round-*.json")):
            assert r.read_text() == (two / "halving" / r.name).read_text()
        pd.testing.assert_frame_equal(pd.read_csv(one / "halving" / "rounds.csv"), pd.read_csv(two / "halving" / "rounds.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(one / "comparisons.csv"), pd.read_csv(two / "comparisons.csv"))


def _sweep(tmp_path: Path, config: Path, out: Path, **kw) -> object:
    return launch(tmp_path, "-m", "layerswap", "sweep", str(config), "--out", str(out), **kw)


@pytest.mark.slow
def test_two_process_exhaustive_sweep_equals_one(tmp_path, tiny_experts, data_dir):
    config = _write_config(tmp_path, tiny_experts, data_dir, "exhaustive", save_best=True)
    _one_process(config, tmp_path / "one")
    proc = _sweep(tmp_path, config, tmp_path / "two")
    _assert_same_sweep(tmp_path / "one", tmp_path / "two")
    assert proc.stdout.count("best mean") == 1, proc.stdout  # only the main process reports
    assert "2 processes share the candidates" in proc.stdout
    assert (tmp_path / "two" / "best-model" / "config.json").exists()


KILLER = """
import os, signal, sys
from layerswap.sweep.halving import UnitStore

def dying(cls, name, after):
    original = getattr(cls, name)
    count = {"n": 0}

    def save(self, *args, **kw):
        original(self, *args, **kw)
        count["n"] += 1
        if os.environ.get("RANK") == "1" and count["n"] == after:
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(cls, name, save)

# Process 1 of 2 SIGKILLs itself right after storing its k-th unit of the race.
dying(UnitStore, "save", int(sys.argv[1]))
from layerswap.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
def test_two_process_halving_equals_one_and_resumes_after_a_kill(tmp_path, tiny_experts, data_dir):
    config = _write_config(tmp_path, tiny_experts, data_dir, "halving", **HALVING)
    _one_process(config, tmp_path / "one")
    rounds = pd.read_csv(tmp_path / "one" / "halving" / "rounds.csv")
    entered = rounds.groupby("round").size().tolist()  # candidates per round: process 1 runs every second unit
    assert len(entered) >= 2 and entered[1] >= 2, rounds
    kill_at = entered[0] // 2 + 1  # process 1's first unit of round 1
    clean = _sweep(tmp_path, config, tmp_path / "clean")  # uninterrupted, two processes
    assert "2 processes share the candidates" in clean.stdout and clean.stdout.count("halving round 0:") == 1
    _assert_same_sweep(tmp_path / "one", tmp_path / "clean")
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / "two"
    proc = launch(tmp_path, str(killer), str(kill_at), "sweep", str(config), "--out", str(out), check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "(SIGKILL)" in proc.stderr  # the kill came, not some other failure
    stored = sorted(p.name for p in (out / "halving" / "units").glob("*.json"))
    assert entered[0] < len(stored) <= entered[0] + entered[1], stored  # the rest of round 1 never ends
    assert (out / "halving" / "round-0.json").exists() and not (out / "results.csv").exists()
    assert not (out / "finals").exists()
    _sweep(tmp_path, config, out)
    _assert_same_sweep(tmp_path / "one", out)
