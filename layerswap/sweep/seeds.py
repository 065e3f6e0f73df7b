"""The same sweep under several training seeds: the key comparisons with intervals over seeds and examples.

With ``seeds: N`` the demo trains every expert N times and runs its one sweep once per seed, each into
its own folder (``sweep``, ``sweep-s1``, ...), on the same candidates (seed 0's recommended swaps and
the baselines) and the same examples. :func:`seed_comparisons` reads each seed's per-example scores by
candidate name and, for the best layer swap (each seed's own, as that seed's sweep decided it on its
decision task: the recipe "train, sweep, take the best swap" is what a seed replicates) against each
expert and the base, on the decision task and the target, puts the example-only and the seed-inclusive
interval side by side (:mod:`layerswap.sweep.seed_stats`). Pairs are matched by example within each seed
and across seeds: only examples both candidates were scored on in every seed count (a candidate halving
dropped early is compared on the examples it was scored on).

``seeds.csv`` columns: task, metric, candidate (``best swap``), candidates (the best swap's name in
each seed, ``;``-joined), reference, seeds, n (examples), diff (candidate minus reference over seeds
and examples), example_low/example_high (95%, seeds held fixed), seed_low/seed_high (95%, seeds and
examples resampled; empty with one seed), per_seed (each seed's difference, ``;``-joined),
between_seed_sd, note. The intervals describe; the verdicts are the sweep's (``comparisons.csv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from layerswap.evaluate.tasks import higher_is_better
from layerswap.sweep.seed_stats import ONE_SEED, seed_interval

#: What the best swap is compared with, in every seed.
REFERENCES = ("math", "lang", "base")
BEST_SWAP = "best swap"
SEEDS_FILE = "seeds.csv"
SEED_COLUMNS = [
    "task", "metric", "candidate", "candidates", "reference", "seeds", "n", "diff",
    "example_low", "example_high", "seed_low", "seed_high", "per_seed", "between_seed_sd", "note",
]


def _by_example(frame: pd.DataFrame | None, task: str) -> pd.DataFrame | None:
    """One candidate's scores on ``task``, indexed by (lang, id)."""
    if frame is None:
        return None
    mine = frame[frame["task"] == task].drop_duplicates(["lang", "id"], keep="last")
    return mine.set_index(["lang", "id"]) if len(mine) else None


def _tables(sides: list[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[tuple[np.ndarray, ...], int]:
    """The seeds x examples tables of one comparison on the examples both sides have, finite, in every
    seed: the differences of scores, or (bits per byte) A's and B's numerators and denominators."""
    keys = None
    for a, b in sides:
        shared = a.index.intersection(b.index)
        keys = shared if keys is None else keys.intersection(shared)
    keys = sorted(keys) if keys is not None else []
    ratio = all(side.get("num") is not None and side["num"].notna().all() for pair in sides for side in pair)
    columns = ["num", "den"] if ratio else ["score"]
    parts = [np.stack([side.loc[keys, c].to_numpy(dtype=np.float64) for a, b in sides for side in (a, b)]) for c in columns]
    # rows 2s (A of seed s) and 2s + 1 (B of seed s); keep the examples finite everywhere
    finite = np.all([np.isfinite(p).all(axis=0) for p in parts], axis=0) if keys else np.zeros(0, bool)
    parts = [p[:, finite] for p in parts]
    if ratio:
        num, den = parts
        return (num[0::2], den[0::2], num[1::2], den[1::2]), int(finite.sum())
    return (parts[0][0::2] - parts[0][1::2],), int(finite.sum())


def _fmt_list(values: Sequence[Any]) -> str:
    return ";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values)


def seed_comparisons(
    sweeps: Sequence[Any], tasks: Sequence[str], *, decision_task: str, confidence: float = 0.95, n_resamples: int = 2000
) -> pd.DataFrame:
    """The key comparisons over the seeds' sweeps (seed order), one row per task and reference.

    ``sweeps``: each seed's :class:`~layerswap.sweep.selection.SweepResult` (its ``scores`` and
    ``decisions``); the best swap of a seed is its decision on ``decision_task``.
    """
    from layerswap.evaluate.tasks import get_task

    swaps = [s.decisions.best_swap(decision_task) for s in sweeps]
    rows = []
    for task in dict.fromkeys(tasks):
        metric = get_task(task).metric
        for ref in REFERENCES:
            base = {"task": task, "metric": metric, "candidate": BEST_SWAP, "candidates": _fmt_list(swaps), "reference": ref,
                    "seeds": len(sweeps)}
            sides = [(_by_example(s.scores.get(w), task) if w else None, _by_example(s.scores.get(ref), task))
                     for s, w in zip(sweeps, swaps, strict=True)]
            missing = [i for i, (a, b) in enumerate(sides) if a is None or b is None]
            if missing:
                rows.append({**base, "n": 0, "note": f"not scored on {task} in seed(s) {_fmt_list(missing)}"})
                continue
            tables, n = _tables(sides)  # type: ignore[arg-type]
            found = seed_interval(*tables, confidence=confidence, n_resamples=n_resamples)
            rows.append({
                **base, "n": n, "diff": found.diff, "example_low": found.example_low, "example_high": found.example_high,
                "seed_low": found.seed_low, "seed_high": found.seed_high, "per_seed": _fmt_list(list(found.per_seed)),
                "between_seed_sd": found.between_seed_sd, "note": found.note,
            })
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


def _ci(low: float, high: float) -> str:
    return "n/a" if any(pd.isna(v) or not math.isfinite(v) for v in (low, high)) else f"[{low:.3g}, {high:.3g}]"


def seed_section(out: str | Path, seeds: int) -> list[str]:
    """The demo report's lines on training seeds: with one seed, one line saying the intervals are over
    examples only; with several, the key comparisons' example-only and seed-inclusive intervals (``seeds.csv``)."""
    path = Path(out) / SEEDS_FILE
    if seeds < 2 or not path.is_file():
        return [
            f"Seeds: {seeds} (the demo's default, for its budget): every interval in this report is over evaluation "
            "examples only; training noise (another seed, other experts) is not in them. `--seeds N` retrains each "
            f"expert N times and adds intervals over seeds and examples ([{SEEDS_FILE}]({SEEDS_FILE}), docs/sweep.md)."
        ]
    table = pd.read_csv(path)
    lines = [
        f"**Training seeds** ({seeds}: each expert trained {seeds} times, the sweep run once per seed, "
        f"[{SEEDS_FILE}]({SEEDS_FILE})): the best swap (each seed's own) minus each expert and the base, over seeds and "
        "examples, with 95% intervals over examples only (seeds held fixed) and over seeds and examples (a two-level "
        f"bootstrap; with {seeds} seeds still a lower bound of the training noise, docs/sweep.md). Descriptive: the verdicts are the sweep's.",
        "",
        "| task (metric) | best swap per seed | vs | diff | examples only | seeds and examples | per seed | examples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        better = "higher" if higher_is_better(str(r["metric"])) else "lower"
        if int(r["n"]) == 0 or pd.isna(r["diff"]):
            lines.append(f"| {r['task']} ({r['metric']}) | {r['candidates']} | `{r['reference']}` | n/a | | | | {r['note']} |")
            continue
        seed_ci = _ci(r["seed_low"], r["seed_high"]) if int(r["seeds"]) > 1 else f"n/a ({ONE_SEED})"
        lines.append(
            f"| {r['task']} ({r['metric']}, {better} is better) | {r['candidates']} | `{r['reference']}` | {r['diff']:+.3g} | "
            f"{_ci(r['example_low'], r['example_high'])} | {seed_ci} | {r['per_seed']} | {int(r['n'])} |"
        )
    return lines
