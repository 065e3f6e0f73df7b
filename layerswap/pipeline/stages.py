"""Stages of a pipeline: each writes one folder, is skipped when that folder is complete, and records
what it cost (seconds and peak resident memory) beside it, so a resumed run still reports every stage.

A stage's peak memory is the process's resident high-water mark over the stage: Linux lets a process
reset that mark (``/proc/self/clear_refs``), so each stage's peak is its own; elsewhere the mark
cannot be reset and a stage reports the process's peak so far (an upper bound, said in the report).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from layerswap.io import write_text_atomic

T = TypeVar("T")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class StageCost:
    """What one stage cost: wall seconds (over every run of it) and peak resident memory in MiB."""

    seconds: float
    peak_rss_mib: float | None = None


def reset_peak_rss() -> bool:
    """Start a new resident high-water mark for this process; False where the OS cannot."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's ``malloc_trim``).

    glibc keeps freed blocks below its mmap threshold (up to 32 MiB) in the process's heap: after a
    270M fine-tune returns, 2.5 of its 3.15 GiB of resident memory were such free blocks, and every
    later stage's peak included them. Elsewhere (no glibc) only the garbage collection runs.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mib() -> float:
    """The process's resident high-water mark in MiB (since the last :func:`reset_peak_rss` on Linux)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cost_record(folder: Path) -> Path:
    """Where a stage's cost is kept, beside its folder (so a resumed run still reports it)."""
    return folder.parent / f".{folder.name}.cost.json"


def read_cost(folder: Path) -> StageCost | None:
    record = cost_record(folder)
    if not record.exists():
        return None
    data = json.loads(record.read_text())
    return StageCost(float(data["seconds"]), data.get("peak_rss_mib"))


def _measured(run: Callable[[], T], before: StageCost | None, folder: Path) -> tuple[StageCost, T]:
    """``run()`` timed and its memory peak taken; the cost is recorded even when ``run`` is interrupted."""
    release_free_memory()  # what earlier stages freed is not this stage's memory
    reset_peak_rss()
    t0 = time.perf_counter()
    cost = before
    try:
        result = run()
    finally:
        peak = peak_rss_mib()
        earlier = before.peak_rss_mib if before is not None and before.peak_rss_mib is not None else 0.0
        seconds = (before.seconds if before is not None else 0.0) + time.perf_counter() - t0
        cost = StageCost(round(seconds, 1), round(max(peak, earlier), 1))
        write_text_atomic(cost_record(folder), json.dumps(asdict(cost)) + "\n")
    return cost, result


def stage(name: str, folder: Path, log: Callable[[str], None], run: Callable[[], object]) -> StageCost:
    """Run a stage unless its output folder is complete (marked by ``layerswap.json``)."""
    if (folder / "layerswap.json").exists():
        log(f"[{name}] done already: {folder}")
        return read_cost(folder) or StageCost(0.0)
    log(f"[{name}] ...")
    cost, _ = _measured(run, None, folder)
    log(f"[{name}] {cost.seconds:.0f} s, peak {cost.peak_rss_mib:.0f} MiB -> {folder}")
    return cost


def resumable_stage(folder: Path, run: Callable[[], T]) -> tuple[StageCost, T]:
    """Run a stage that resumes inside itself (the sweep keeps every evaluated unit) and return its
    result; its seconds add up over every run of it in this folder, an interrupted one included, so a
    resumed pipeline reports what the stage cost in all, not the last run's reload."""
    return _measured(run, read_cost(folder), folder)
