"""Does a sweep's whole procedure (halving race, then the final verdicts) keep its family-wise guarantee?

Planted per-example score tables where the true best candidate is known go through what a halving
sweep runs (:func:`layerswap.sweep.search.run_halving_sweep`, with no target task): the race
(:func:`layerswap.sweep.halving.run_halving`, its unit store kept in memory, the scoring callback reading
the planted table: no model), each candidate's results over the examples it was scored on, the selection
module's decisions (:func:`~layerswap.sweep.selection.decide_sweep`) and the final verdicts
(:func:`~layerswap.sweep.compare.compare_candidates`, given the race). A sweep **names a winner** when its
report does (:func:`layerswap.sweep.verdicts.verdict_lines`: every other candidate is significantly worse
than the leader or was eliminated by the race). The error is a named winner that is not strictly the
best (another candidate is as good or better); in the tied scenarios, where two candidates share the
top, any named winner is that error. Beside it, on the same sweeps: a more generous reading (chains of
verdicts) and a deliberately bad procedure (the leader, whatever the verdicts say). Reported per scenario:
the winner-error rate with its 95% Clopper-Pearson interval next to alpha, the power (the true best
named, where it is unique) and what the race spent and why it stopped.

    python benchmarks/bench_verdicts.py --sweeps 1000 --jobs 2 --out benchmarks/results/verdicts.md
    python benchmarks/bench_verdicts.py --scenarios mean-tied=1000 binary-best=200   # KEY=SWEEPS each
    python benchmarks/bench_verdicts.py --scenarios binary-best --without-early-stop  # the race's early stop against none

Score tables (six candidates: four layer swaps and the two experts, one language): ``mean`` (the
proxy's log-likelihood: an offset, a shared example effect N(0, 1) and the candidate's own N(0, 1));
``binary`` (MGSM exact match: 1 with probability ``sigmoid(offset + b_i)``, ``b_i ~ N(0, 1.5)`` shared);
``ratio`` (FLORES bits per byte, lower is better: each sentence's bytes, and bits = bytes x (1.5 -
offset x 0.3 + shared and own noise)).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ALPHA = 0.05
SWAPS = ("swap-b1-u1", "swap-b2-u1", "swap-b2-u2", "swap-b3-u2")
EXPERTS = ("math", "lang")


@dataclass(frozen=True)
class Scenario:
    """A planted sweep: the task (its kind of score), each candidate's true offset (higher is better; the
    swaps first, then the two experts: :attr:`names`), the race's block and the examples allowed."""

    name: str
    task: str
    offsets: tuple[float, ...]
    block: int
    max_examples: int

    @property
    def names(self) -> tuple[str, ...]:
        return SWAPS[: len(self.offsets) - len(EXPERTS)] + EXPERTS

    @property
    def best(self) -> set[str]:
        top = max(self.offsets)
        return {n for n, o in zip(self.names, self.offsets, strict=True) if o == top}

    @property
    def tied(self) -> bool:
        return len(self.best) > 1


SCENARIOS = {
    "mean-tied": Scenario("mean, two tied at the top", "proxy", (0.0, 0.0, -0.4, -0.7, -1.0, -1.5), 16, 64),
    "mean-best": Scenario("mean, one best", "proxy", (0.0, -0.6, -0.8, -1.0, -1.2, -1.5), 16, 64),
    "binary-tied": Scenario("0/1, two tied at the top", "mgsm", (0.0, 0.0, -0.6, -1.0, -1.4, -2.0), 32, 128),
    "binary-best": Scenario("0/1, one best", "mgsm", (0.0, -0.9, -1.1, -1.4, -1.7, -2.0), 32, 128),
    "ratio-tied": Scenario("ratio, two tied at the top", "flores", (0.0, 0.0, -0.4, -0.7, -1.0, -1.5), 16, 64),
    "ratio-best": Scenario("ratio, one best", "flores", (0.0, -0.6, -0.8, -1.0, -1.2, -1.5), 16, 64),
}


def planted(scenario: Scenario, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Every candidate's per-example scores on every example the race may ask for."""
    n, k = scenario.max_examples, len(scenario.names)
    offsets = np.asarray(scenario.offsets)[None, :]
    ids = [f"sw-{i}" for i in range(n)]
    extra: dict[str, np.ndarray] = {}
    if scenario.task == "mgsm":
        p = 1.0 / (1.0 + np.exp(-(offsets + rng.normal(scale=1.5, size=(n, 1)))))
        score = (rng.random((n, k)) < p).astype(np.float64)
    elif scenario.task == "flores":
        size = rng.integers(40, 400, size=(n, 1)).astype(np.float64)
        rate = np.maximum(0.05, 1.5 - 0.3 * offsets + 0.3 * rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, k)))
        bits = size * rate
        score, extra = bits / size, {"num": bits, "den": np.broadcast_to(size, (n, k))}
    else:
        score = offsets + rng.normal(size=(n, 1)) + rng.normal(size=(n, k))
    return {
        name: pd.DataFrame(
            {"task": scenario.task, "lang": "sw", "id": ids, "score": score[:, j],
             **({key: v[:, j] for key, v in extra.items()})}
        )
        for j, name in enumerate(scenario.names)
    }


def candidates(scenario: Scenario) -> list:
    """The scenario's layer swaps and the two experts, as a sweep builds them."""
    from layerswap.sweep.candidates import swap_candidate
    from layerswap.sweep.config import Candidate

    swaps = [swap_candidate(int(n[6]), int(n[9]), 0) for n in scenario.names if n in SWAPS]
    return swaps + [Candidate(name=n, method="identity", params={"source": n}, source="baseline") for n in EXPERTS]


def config(scenario: Scenario, alpha: float):
    from layerswap.sweep import validate_sweep_dict

    return validate_sweep_dict({
        "base": "b", "math": "m", "lang": "l", "languages": ["sw"], "tasks": [scenario.task], "screen": scenario.task,
        "limit": scenario.max_examples,
        "candidates": {"search": "halving", "halving": {"block": scenario.block, "alpha": alpha}, "baselines": ["math", "lang"]},
    })


def dominates(comparisons: pd.DataFrame, task: str, metric: str, leader: str, names: list[str]) -> bool:
    """Whether the verdicts put ``leader`` above every other candidate (directly or through a chain of
    "worse" verdicts: a candidate dropped by a round leader that ``leader`` beat)."""
    rows = comparisons[(comparisons["task"] == task) & (comparisons["metric"] == metric) & (comparisons["language"] == "all")]
    below: dict[str, set[str]] = {}
    for ref, cand, verdict in zip(rows["reference"], rows["candidate"], rows["verdict"], strict=True):
        if verdict == "worse":
            below.setdefault(ref, set()).add(cand)
        elif verdict == "better":
            below.setdefault(cand, set()).add(ref)
    reached, todo = {leader}, [leader]
    while todo:
        for c in below.get(todo.pop(), ()):
            if c not in reached:
                reached.add(c)
                todo.append(c)
    return set(names) <= reached


#: A procedure: the race, the decisions and the comparisons of one sweep -> the named winner or None.
Procedure = Callable[..., "str | None"]


def verdicts_procedure(race, decisions, selection, comparisons, task: str, metric: str) -> str | None:
    """The sweep's own: the winner its report names, in the report's words
    (:func:`layerswap.sweep.verdicts.verdict_lines`: "`X` is the winner: every other candidate is
    significantly worse or was eliminated by the race")."""
    from layerswap.sweep.verdicts import verdict_lines

    for line in verdict_lines(comparisons, task, metric):
        if " is the winner" in line and line.startswith("`"):
            return line[1 : line.index("`", 1)]
    return None


def chain_procedure(race, decisions, selection, comparisons, task: str, metric: str) -> str | None:
    """A more generous reading of the same verdicts: the leader whenever chains of verdicts put it above
    every other candidate (a survivor indistinguishable from it directly, but worse than one it beat)."""
    return selection.winner if dominates(comparisons, task, metric, selection.winner, list(race.scores)) else None


def leader_procedure(race, decisions, selection, comparisons, task: str, metric: str) -> str | None:
    """A deliberately bad one: the leader, whatever the verdicts say."""
    return selection.winner


class MemoryStore:
    """The race's unit store (:class:`layerswap.sweep.halving.UnitStore`'s methods) kept in memory: a
    simulated sweep writes nothing to disk."""

    def __init__(self) -> None:
        self.units: dict[str, pd.DataFrame] = {}

    def load(self, candidate, unit) -> tuple[pd.DataFrame, float, float] | None:
        found = self.units.get(unit.name)
        return None if found is None else (found, 0.0, 0.0)

    def status(self, units, candidates) -> tuple[int, dict]:
        return sum(u.name in self.units for u in units), {}

    def save(self, candidate, unit, scores, seconds, merge_seconds) -> None:
        self.units[unit.name] = scores

    def save_round(self, decision, plan) -> None:
        pass


def one_sweep(scenario: Scenario, seed: int, alpha: float, procedures: dict[str, Procedure]) -> dict:
    """One simulated sweep end to end, as :func:`~layerswap.sweep.search.run_halving_sweep` runs it with no
    target (the race on the task, each candidate's results over the examples it was scored on), then the
    decisions and the verdicts; per procedure, what it named and whether that is an error."""
    from layerswap.evaluate.tasks import get_task
    from layerswap.sweep.compare import compare_candidates
    from layerswap.sweep.halving import run_halving
    from layerswap.sweep.search import halving_plan, screen_summary
    from layerswap.sweep.selection import decide_sweep
    from layerswap.sweep.store import RESULT_COLUMNS, rows_for

    table = planted(scenario, np.random.default_rng([seed, len(scenario.name)]))

    def evaluate_block(cand, unit) -> pd.DataFrame:
        return table[cand.name].iloc[unit.start : unit.stop].reset_index(drop=True)

    cands = candidates(scenario)
    race = run_halving(cands, halving_plan(config(scenario, alpha)), MemoryStore(), lambda c: 0.0, evaluate_block, log=lambda s: None)
    rows = []
    for cand in cands:
        rows += rows_for(cand, screen_summary(race.scores[cand.name], scenario.task), eval_seconds=0.0, merge_seconds=0.0)
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    metric = get_task(scenario.task).metric
    tasks = [(scenario.task, metric)]
    decisions, selection = decide_sweep(results, tasks, scenario.task, race)
    comparisons = compare_candidates(results, race.scores, tasks, alpha=alpha, decisions=decisions, race=race)
    truth = dict(zip(scenario.names, scenario.offsets, strict=True))
    out = {"spent": race.spent, "full": len(cands) * scenario.max_examples, "stop": race.rounds[-1].stop or "every round was run"}
    for label, procedure in procedures.items():
        named = procedure(race, decisions, selection, comparisons, scenario.task, metric)
        wrong = named is not None and any(v >= truth[named] for c, v in truth.items() if c != named)
        out[label] = {"named": named, "wrong": wrong, "right": named is not None and not wrong}
    return out


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def memoise_binomtest() -> None:
    """Make ``scipy.stats.binomtest(k, n)`` a memoised function inside :mod:`layerswap.stats` (for this
    process): Newcombe's interval builds each side's Wilson interval from it, and the exact p-value it
    computes on construction (unused there) is most of a 0/1 sweep's time. Pure, so no result changes."""
    import functools
    import types

    import scipy.stats

    import layerswap.stats as ls

    if hasattr(ls._st.binomtest, "cache_info"):
        return
    proxy = types.ModuleType("scipy.stats (binomtest memoised)")
    proxy.__dict__.update(vars(scipy.stats))
    proxy.binomtest = functools.lru_cache(maxsize=None)(scipy.stats.binomtest)
    ls._st = proxy


PROCEDURES: dict[str, Procedure] = {"verdicts": verdicts_procedure, "chain": chain_procedure, "leader": leader_procedure}


def _chunk(scenario: Scenario, seeds: list[int], alpha: float, labels: tuple[str, ...], early_stop: bool) -> list[dict]:
    from layerswap.progress import set_quiet

    set_quiet(True)
    memoise_binomtest()
    import layerswap.sweep.halving as halving

    closest = halving.closest_pair
    if not early_stop:  # the contender: the same race without its early stop (no pair is ever judged hopeless)
        halving.closest_pair = lambda *args, **kwargs: None
    try:
        return [one_sweep(scenario, s, alpha, {k: PROCEDURES[k] for k in labels}) for s in seeds]
    finally:
        halving.closest_pair = closest


def simulate(scenario: Scenario, sweeps: int, *, alpha: float = ALPHA, procedures: tuple[str, ...] = ("verdicts",),
             seed: int = 0, jobs: int = 1, early_stop: bool = True) -> dict[str, dict]:
    """``sweeps`` simulated sweeps of ``scenario`` (sweep ``i`` from seed ``i``: the same tables whatever
    ``jobs``); per procedure (:data:`PROCEDURES`) the winner-error rate with its 95% Clopper-Pearson
    interval, how often a winner is named and the power."""
    seeds = [seed * 1_000_003 + i for i in range(sweeps)]
    if jobs <= 1:
        rows = _chunk(scenario, seeds, alpha, procedures, early_stop)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        parts = [seeds[i : i + 20] for i in range(0, sweeps, 20)]
        rows = []
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            for part in pool.map(_chunk, *zip(*[(scenario, p, alpha, procedures, early_stop) for p in parts], strict=True)):
                rows += part
                print(f"{scenario.name}: {len(rows)} / {sweeps} sweeps", file=sys.stderr, flush=True)
    spent = float(np.mean([r["spent"] / r["full"] for r in rows]))
    stops = pd.Series([r["stop"] for r in rows]).value_counts().to_dict()
    found = {}
    for label in procedures:
        errors = int(sum(r[label]["wrong"] for r in rows))
        low, high = clopper_pearson(errors, sweeps)
        found[label] = {
            "scenario": scenario.name + ("" if early_stop else " (race without the early stop)"), "procedure": label,
            "sweeps": sweeps, "errors": errors, "error_rate": errors / sweeps, "ci_low": low, "ci_high": high,
            "consistent": low <= alpha, "named": float(np.mean([r[label]["named"] is not None for r in rows])),
            "power": math.nan if scenario.tied else float(np.mean([r[label]["right"] for r in rows])),
            "spent": spent, "stops": stops,
        }
    return found


def report(found: list[dict], chain: list[dict], bad: list[dict], alpha: float, seconds: float) -> str:
    from layerswap.sweep.race import NO_SEPARATION

    command = "python benchmarks/bench_verdicts.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows = []
    for r, c, b in zip(found, chain, bad, strict=True):
        early = r["stops"].get(NO_SEPARATION, 0)
        power = "-" if math.isnan(r["power"]) else f"{r['power']:.2f}"
        chain_power = "" if math.isnan(c["power"]) else f"; power {c['power']:.2f}"
        rows.append(
            f"| {r['scenario']} | {r['errors']} / {r['sweeps']} = {r['error_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
            f"{alpha} | {'yes' if r['consistent'] else '**no**'} | {r['named']:.2f} | "
            f"{power} | {r['spent']:.0%} | {early / r['sweeps']:.0%} | {c['error_rate']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]{chain_power} | "
            f"{b['error_rate']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] |"
        )
    worst = max(found, key=lambda r: r["ci_high"])
    total = sum(r["errors"] for r in found), sum(r["sweeps"] for r in found)
    return "\n".join([
        "# Verdicts: " + ("the halving race with and without its early stop, by simulation (issue 27)"
                          if any("without the early stop" in r["scenario"] for r in found)
                          else "the family-wise guarantee of the whole procedure, by simulation (issue 27)"),
        "",
        f"Command: `{command}` ({seconds / 60:.0f} minutes on this machine's shared cores)",
        "",
        "Simulated sweeps, each through the sweep's own code on planted per-example scores "
        "(`run_halving` with its unit store in memory and the results table as `run_halving_sweep` builds it; `decide_sweep`; "
        "`compare_candidates` given the race), "
        f"family-wise alpha {alpha} for the race and for the final verdicts. Six candidates (four swaps and the two experts), "
        "one language. A sweep names a winner when its report does (`verdict_lines`: \"`X` is the winner: every other candidate "
        "is significantly worse or was eliminated by the race\"); an error is a named winner that is not strictly the best "
        "(in the tied scenarios every named winner). Interval: 95% Clopper-Pearson; consistent: its lower end is <= alpha. "
        "Beside it, two other readings of the same sweeps: the leader whenever chains of verdicts put it above every other "
        "candidate (more generous), and the leader whatever the verdicts say (deliberately bad: the check must fail it).",
        "",
        "| scenario | winner errors [95% CI] | alpha | consistent with <= alpha | winner named | power (true best named) | examples spent | stopped early (could not separate) | by chains of verdicts: errors [95% CI] | naming the leader regardless: errors [95% CI] |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        f"**Measured check of the family-wise guarantee:** over {total[1]} simulated halving sweeps ({len(found)} scenarios), a wrong "
        f"winner was named {total[0]} times; the worst scenario ({worst['scenario']}) has {worst['errors']} / {worst['sweeps']}, "
        f"95% CI [{worst['ci_low']:.3f}, {worst['ci_high']:.3f}] against alpha = {alpha}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=1000, help="simulated sweeps per scenario (unless KEY=SWEEPS says otherwise)")
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), help=f"KEY or KEY=SWEEPS; keys: {', '.join(SCENARIOS)}")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each sweep's tables depend on its index only)")
    parser.add_argument("--without-early-stop", action="store_true", help="also run the race without its early stop (power side by side)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    found, chain, bad = [], [], []
    for item in args.scenarios:
        key, _, count = item.partition("=")
        if key not in SCENARIOS:
            parser.error(f"unknown scenario {key!r}: valid keys are {', '.join(SCENARIOS)}")
        for early in (True, False) if args.without_early_stop else (True,):
            got = simulate(SCENARIOS[key], int(count or args.sweeps), alpha=args.alpha, procedures=tuple(PROCEDURES),
                           jobs=args.jobs, early_stop=early)
            found.append(got["verdicts"])
            chain.append(got["chain"])
            bad.append(got["leader"])
            print(found[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
            if args.out is not None:  # after each scenario: a run cut short still leaves what it measured
                args.out.write_text(report(found, chain, bad, args.alpha, time.perf_counter() - t0), encoding="utf-8")
    print(report(found, chain, bad, args.alpha, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
