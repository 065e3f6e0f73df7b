"""Halving: example-evaluations spent and the verdict, replayed on one recorded exhaustive sweep.

The recorded sweep (``benchmarks/data/halving_scores.csv``: every candidate's per-example score on
every example) is replayed through the sweep's own race (:func:`layerswap.sweep.halving.run_halving`,
with its unit store) by an ``evaluate_block`` that looks the scores up instead of running a model.
For each seed the examples are put in another fixed order (seed 0: the data's order), the race runs,
and its winner (the first of its ranking) is checked against the exhaustive verdict: the exhaustive
leader, and the candidates the sweep's paired comparison (``layerswap.sweep.compare``, Holm) cannot
separate from it. Goal: the same verdict at <= 40% of the exhaustive example-evaluations.

    python benchmarks/bench_halving.py --seeds 10 --block 10 --out benchmarks/results/halving.md
    python benchmarks/bench_halving.py --record SWEEP_DIR [SWEEP_DIR ...]   # write the data file from finished exhaustive sweeps
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from layerswap.evaluate.tasks import get_task
from layerswap.progress import set_quiet
from layerswap.sweep.compare import compare_candidates
from layerswap.sweep.config import Candidate
from layerswap.sweep.halving import HalvingPlan, UnitStore, run_halving
from layerswap.sweep.race_stats import RULE
from layerswap.sweep.store import read_scores

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "halving_scores.csv"
#: How the committed data file was recorded (shown when the benchmark replays it).
PROVENANCE = (
    "Recorded on this machine (2 shared CPU cores): Gemma 3 270M with two experts fine-tuned 12 full steps each "
    "(`train_experts`, today `layerswap.pipeline.train_experts`: GSM8K train, NTREX-sw), the gold-answer proxy on the first 40 MGSM-sw "
    "questions, 0 shots. Five candidates (swaps b1-2 x u1-2, base) by `layerswap sweep` (in-memory merges); the "
    "experts math and lang by `layerswap evaluate` on their folders (the same evaluation function; what the sweep's "
    "identity candidates evaluate). CPU contention limited the recording to 7 candidates x 40 examples."
)


def record(sweeps: list[Path], out: Path) -> None:
    """Every stored candidate's per-example scores of exhaustive sweeps (the same settings, the
    candidates possibly shared out among several folders, finished or not), as one CSV."""
    import json

    frames = []
    for sweep in sweeps:
        for path in sorted((sweep / "candidates").glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            name, method = record["rows"][0]["candidate"], record["rows"][0]["method"]
            scores = read_scores((sweep / "candidates" / f"{name}.scores.csv").read_text(encoding="utf-8"))
            frames.append(scores.assign(candidate=name, method=method)[["candidate", "method", "task", "lang", "id", "score"]])
    table = pd.concat(frames, ignore_index=True)
    sizes = table.groupby("candidate").size()
    if sizes.nunique() != 1:
        raise SystemExit(f"the sweeps scored different numbers of examples per candidate: {sizes.to_dict()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    print(f"wrote {out}: {table['candidate'].nunique()} candidates x {sizes.iloc[0]} examples")


def exhaustive_verdict(table: pd.DataFrame, task: str) -> tuple[str, set[str]]:
    """The exhaustive leader and the candidates indistinguishable from it (the sweep's paired comparison)."""
    metric = get_task(task).metric
    means = table.groupby(["candidate", "lang"], sort=False)["score"].mean().reset_index()
    methods = table.groupby("candidate", sort=False)["method"].first()
    results = means.assign(task=task, metric=metric, method=means["candidate"].map(methods)).rename(
        columns={"lang": "language", "score": "value"}
    )
    scores = {
        c: g[["task", "lang", "id", "score"]].assign(num=np.nan, den=np.nan) for c, g in table.groupby("candidate", sort=False)
    }
    comps = compare_candidates(results, scores, [(task, metric)])
    lead = comps[(comps["role"] == "leader") & (comps["language"] == "all")]
    leader = str(lead["reference"].iloc[0])
    return leader, {leader} | set(lead.loc[lead["verdict"] != "worse", "candidate"])


def replay(table: pd.DataFrame, task: str, seed: int, block: int, alpha: float, work: Path) -> dict:
    """One race on the recorded scores, the examples in the order of ``seed`` (0: the data's order)."""
    names = list(dict.fromkeys(table["candidate"]))
    methods = table.groupby("candidate", sort=False)["method"].first()
    langs = list(dict.fromkeys(table["lang"]))
    ids = {lang: list(dict.fromkeys(table.loc[table["lang"] == lang, "id"])) for lang in langs}
    n = min(len(v) for v in ids.values())
    order = {lang: (v if seed == 0 else list(np.random.default_rng(seed).permutation(v))) for lang, v in ids.items()}
    lookup = table.set_index(["candidate", "lang", "id"])["score"]
    evaluations = {"n": 0}

    def evaluate_block(cand: Candidate, unit) -> pd.DataFrame:
        rows = [
            {"task": task, "lang": lang, "id": i, "score": float(lookup[(cand.name, lang, i)])}
            for lang in langs
            for i in order[lang][unit.start : unit.stop]
        ]
        evaluations["n"] += len(rows)
        return pd.DataFrame(rows)

    cands = [Candidate(name=c, method=str(methods[c]), params={"replay": c}) for c in names]
    plan = HalvingPlan(
        task=task,
        block=block,
        max_examples=n,
        languages=len(langs),
        alpha=alpha,
        higher_is_better=get_task(task).higher_is_better,
    )
    race = run_halving(cands, plan, UnitStore(work / f"seed{seed}", "replay"), lambda c: 0.0, evaluate_block, log=lambda s: None)
    assert evaluations["n"] == race.spent
    return {"seed": seed, "race": race, "full": len(names) * n * len(langs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--record", type=Path, nargs="+", default=None, help="finished exhaustive sweep folder(s) to record into --data"
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.record is not None:
        record(args.record, args.data)
        return
    set_quiet(True)
    table = pd.read_csv(args.data, dtype={"id": str, "lang": str})
    task = str(table["task"].iloc[0])
    leader, tied = exhaustive_verdict(table, task)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-halving-") as tmp:
        for seed in range(args.seeds):
            r = replay(table, task, seed, args.block, args.alpha, Path(tmp))
            race = r["race"]
            winner = race.ranking()[0]
            rows.append(
                {
                    "seed": seed,
                    "rounds": len(race.rounds),
                    "survivors": len(race.survivors),
                    "stop": race.rounds[-1].stop,
                    "evaluations": race.spent,
                    "fraction": race.spent / r["full"],
                    "winner": winner,
                    "same winner": winner == leader,
                    "same verdict": winner in tied,
                    "exhaustive leader kept": leader in race.survivors,
                }
            )
    frame = pd.DataFrame(rows)
    n_cands = table["candidate"].nunique()
    n_ex = table.groupby("candidate").size().iloc[0]
    command = "python benchmarks/bench_halving.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Halving: example-evaluations and verdict, replayed on a recorded exhaustive sweep",
        "",
        f"`{command}`",
        "",
        f"Recorded sweep: `{args.data.relative_to(HERE.parent) if args.data.is_relative_to(HERE.parent) else args.data}`, task `{task}`, "
        f"{n_cands} candidates x {n_ex} examples (every candidate on every example: {n_cands * n_ex} example-evaluations). "
        f"Exhaustive leader: `{leader}`; indistinguishable from it (paired test, Holm, alpha 0.05): "
        f"{', '.join(f'`{c}`' for c in sorted(tied - {leader})) or 'none'}.",
        "",
        *([PROVENANCE, ""] if args.data.resolve() == DATA else []),
        f"The race: the sweep's own `run_halving` (blocks of {args.block} examples, family-wise alpha {args.alpha} split over the rounds "
        f"and both directions, Holm within a round; {RULE}), fed by a replay of the recorded scores; seed 0 keeps the data's order, "
        "each other seed a fixed permutation.",
        "",
        frame.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"**Median fraction of the exhaustive example-evaluations: {frame['fraction'].median():.0%}** "
        f"(range {frame['fraction'].min():.0%}-{frame['fraction'].max():.0%}); same verdict (winner = the exhaustive leader or "
        f"statistically indistinguishable from it) in {int(frame['same verdict'].sum())} of {len(frame)} orders; "
        f"same winner in {int(frame['same winner'].sum())}; the exhaustive leader survived in {int(frame['exhaustive leader kept'].sum())}. "
        f"Goal: the same verdict at <= 40%: {'met' if frame['same verdict'].all() and frame['fraction'].median() <= 0.4 else 'not met'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
