"""comparisons.csv: one verdict per unordered pair, from one test whose interval it never contradicts,
and the race's eliminations reported as eliminated (issue 27)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from layerswap.sweep.compare import COMPARISON_COLUMNS, RACE, against, compare_candidates, eliminated
from layerswap.sweep.selection import ALL

METHODS = {"swap-b1-u1": "layer_swap", "swap-b2-u1": "layer_swap", "swap-b3-u2": "layer_swap", "base": "identity",
           "math": "identity", "lang": "identity", "soup": "linear"}
TASKS = [("proxy", "gold_logprob"), ("mgsm", "exact_match"), ("flores", "bits_per_byte")]


def _tables(seed: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Random score tables of the three kinds (means, 0/1 with language fidelity, ratios), random effects."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 24))
    langs = ["sw"] if seed % 2 else ["sw", "bn"]
    names = list(METHODS)[: int(rng.integers(3, len(METHODS) + 1))]
    truth = rng.random(n * len(langs))
    nbytes = rng.integers(20, 120, n * len(langs)).astype(float)
    rows, scores = [], {}
    for name in names:
        shift, acc = rng.normal(0, 0.6), rng.uniform(0.1, 0.9)
        lang = np.repeat(langs, n)
        ids = [f"e{i}" for i in range(n)] * len(langs)
        logprob = np.round(rng.normal(shift, 1.0, n * len(langs)), int(rng.integers(0, 3)))  # rounding makes ties
        correct = (truth < acc).astype(float)
        flip = rng.random(correct.size) < 0.2
        correct[flip] = 1 - correct[flip]
        fidelity = (rng.random(correct.size) < rng.uniform(0.2, 0.9)).astype(float)
        bits = nbytes * rng.uniform(1.5, 2.5) + rng.normal(0, 3, nbytes.size)
        frame = pd.concat([
            pd.DataFrame({"task": "proxy", "lang": lang, "id": ids, "score": logprob}),
            pd.DataFrame({"task": "mgsm", "lang": lang, "id": ids, "score": correct}),
            pd.DataFrame({"task": "mgsm#lang_fidelity", "lang": lang, "id": ids, "score": fidelity}),
            pd.DataFrame({"task": "flores", "lang": lang, "id": ids, "score": bits / nbytes, "num": bits, "den": nbytes}),
        ], ignore_index=True)
        scores[name] = frame
        for lg in langs:
            mine = frame[frame["lang"] == lg]
            for task, metric in TASKS:
                sub = mine[mine["task"] == task]
                value = sub["num"].sum() / sub["den"].sum() if task == "flores" else sub["score"].mean()
                rows.append({"candidate": name, "method": METHODS[name], "task": task, "language": lg, "metric": metric, "value": value})
            rows.append({"candidate": name, "method": METHODS[name], "task": "mgsm", "language": lg, "metric": "lang_fidelity",
                         "value": mine.loc[mine["task"] == "mgsm#lang_fidelity", "score"].mean()})
    return pd.DataFrame(rows), scores


def _contradicts(row: pd.Series) -> bool:
    """Whether a row's verdict disagrees with its own interval (or its adjusted p-value)."""
    lower = row["metric"] == "bits_per_byte"
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    if row["verdict"] in ("better", "worse"):
        up = row["ci_low"] > 0
        sign_ok = (up != lower) == (row["verdict"] == "better")
        return not (excludes and sign_ok and row["p_adjusted"] <= 0.05 + 1e-12)
    if row["verdict"] == "indistinguishable":
        return excludes or row["p_adjusted"] <= 0.05 - 1e-12
    return row["n"] >= 2  # undetermined: too few examples only


@pytest.mark.parametrize("seed", range(10))
def test_no_verdict_contradicts_its_interval_and_each_pair_has_one(seed):
    results, scores = _tables(seed)
    comps = compare_candidates(results, scores, TASKS)
    assert list(comps.columns) == COMPARISON_COLUMNS and len(comps)
    bad = comps[comps.apply(_contradicts, axis=1)]
    assert bad.empty, bad.to_string()
    pair = comps.apply(lambda r: frozenset((r["reference"], r["candidate"])), axis=1)
    assert not pd.DataFrame({"k": comps["task"] + comps["metric"] + comps["language"], "pair": pair}).duplicated().any()
    # One family per task, metric and scope: one level, p_adjusted = min(1, p x m).
    for _, fam in comps.groupby(["task", "metric", "language"]):
        assert fam["level"].nunique() == 1
        m = round(0.05 / fam["level"].iloc[0])
        assert m == len(fam[fam["n"] >= 2])
        assert np.allclose(fam["p_adjusted"], np.minimum(1.0, fam["p_value"] * m))
    assert set(comps["test"]) <= {"permutation", "newcombe", "bootstrap", "none"}
    assert "lang_fidelity" in set(comps["metric"])  # the extra metric is paired like the headline
    assert set(comps.loc[comps["metric"] == "lang_fidelity", "test"]) <= {"newcombe", "none"}


def test_against_reads_every_pair_of_a_reference_oriented():
    results, scores = _tables(3)
    comps = compare_candidates(results, scores, TASKS)
    names = set(results["candidate"])
    for ref in names:
        rows = against(comps, "proxy", "gold_logprob", ref)
        assert (rows["reference"] == ref).all() and not rows["candidate"].duplicated().any()
        for _, r in rows.iterrows():
            back = against(comps, "proxy", "gold_logprob", r["candidate"]).set_index("candidate").loc[ref]
            assert back["diff"] == pytest.approx(-r["diff"]) and back["ci_low"] == pytest.approx(-r["ci_high"])
            assert {back["verdict"], r["verdict"]} in ({"better", "worse"}, {"indistinguishable"}, {"undetermined"})


def _race(seed: int = 1):
    """A one-round race on planted proxy scores: `lang` is far worse than the rest and is eliminated."""
    from layerswap.sweep.halving import decide
    from layerswap.sweep.race import HalvingPlan, HalvingResult

    rng = np.random.default_rng(seed)
    n = 8
    base = rng.normal(0, 1, n)
    shifts = {"swap-b1-u1": 0.0, "swap-b2-u1": 0.0, "base": 0.0, "lang": -6.0}
    scores = {c: pd.DataFrame({"task": "proxy", "lang": "sw", "id": [f"e{i}" for i in range(n)],
                               "score": base + s + rng.normal(0, 0.3, n)}) for c, s in shifts.items()}
    plan = HalvingPlan(task="proxy", block=n, max_examples=2 * n)
    dec = decide(plan, 0, list(shifts), scores, n * len(shifts), False)
    assert dec.eliminated == ["lang"]
    race = HalvingResult(plan, [dec], scores)
    methods = {"swap-b1-u1": "layer_swap", "swap-b2-u1": "layer_swap", "base": "identity", "lang": "identity"}
    results = pd.DataFrame([{"candidate": c, "method": methods[c], "task": "proxy", "language": "sw", "metric": "gold_logprob",
                             "value": s["score"].mean()} for c, s in scores.items()])
    return results, scores, race


def test_a_candidate_the_race_eliminated_is_reported_as_eliminated():
    from layerswap.sweep.verdicts import verdict_lines

    results, scores, race = _race()
    comps = compare_candidates(results, scores, [("proxy", "gold_logprob")], race=race)
    out = eliminated(comps, "proxy")
    assert out["candidate"].tolist() == ["lang"]
    row = out.iloc[0]
    assert row["test"] == RACE and row["verdict"] == "worse" and row["eliminated_in_round"] == 0
    assert row["ci_low"] == -math.inf and row["ci_high"] < 0 and row["n"] == 8  # the race's one-sided bound
    assert not _contradicts(row)
    # The race's pair is not tested again, nor counted in the family of the final tests.
    lang_pairs = comps[(comps["candidate"] == "lang") | (comps["reference"] == "lang")]
    assert (lang_pairs["test"] == RACE).sum() == 1
    final = comps[comps["test"] != RACE]
    assert round(0.05 / final["level"].iloc[0]) == len(final)
    lines = verdict_lines(comps, "proxy", "gold_logprob")
    text = "\n".join(lines)
    assert f"`lang` dropped in round 0: worse than `{race.rounds[0].leader}` by at least" in text and "over 8 examples" in text
    assert not any("`lang`" in line for line in lines if line.startswith("**Not a clear winner**"))
    assert "beats the expert `lang` (the race eliminated it in round 0" in text


def test_the_heatmap_marks_what_the_verdicts_say():
    from layerswap.sweep.figures import _marks

    results, scores, race = _race()
    comps = compare_candidates(results, scores, [("proxy", "gold_logprob")], race=race)
    best = race.rounds[0].leader
    boxed, raced = _marks(comps, "proxy", "gold_logprob", ALL, best)
    said = against(comps, "proxy", "gold_logprob", best)
    assert raced == {"lang"} and "lang" not in boxed
    assert boxed == set(said.loc[said["verdict"] == "indistinguishable", "candidate"]) - raced


def test_the_sweep_report_leads_with_the_target(tmp_path):
    """The answer first: the target's finalists and verdict, then the race and the screen (issue 27 item 4)."""
    from test_sweep_halving import SMALL, _block, _cands, _config, _target

    from layerswap.sweep.report import write_report
    from layerswap.sweep.search import run_halving_sweep

    cfg = _config(candidates=SMALL, finalists=1)
    cands = _cands(cfg)
    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _block, _target, log=lambda s: None)
    written = write_report(results, cfg, len(cands), tmp_path, scores, race)
    report = (tmp_path / "report.md").read_text()
    assert report.split("\n")[2] == "## The answer: mgsm (the target)"
    assert report.index("**mgsm exact_match**") < report.index("## Successive halving on proxy") < report.index("## proxy: gold_logprob")
    # On the screen, every candidate the race dropped is said to be dropped, with its round; none is called
    # indistinguishable (on the target, evaluated on its own examples, they may well be).
    screen = report.split("## proxy: gold_logprob")[1]
    for name in race.rounds[0].eliminated:
        assert f"`{name}` dropped in round 0: worse than" in screen
    assert not any(f"`{n}`" in line for n in race.rounds[0].eliminated for line in screen.split("\n") if line.startswith("**Not a clear winner**"))
    assert set(eliminated(written.comparisons, "proxy")["candidate"]) == {n for r in race.rounds for n in r.eliminated}


def test_the_published_demo_verdicts_agree_with_their_intervals():
    """The committed demo output (figures/): no verdict in its comparisons table contradicts its interval, each
    pair has one row, and its report states no Holm-adjusted verdict (the old, contradicting ones)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "figures"
    comps = pd.read_csv(root / "demo_comparisons.csv")
    assert len(comps) and list(comps.columns) == COMPARISON_COLUMNS
    bad = comps[comps.apply(_contradicts, axis=1)]
    assert bad.empty, bad.to_string()
    pair = comps.apply(lambda r: frozenset((r["reference"], r["candidate"])), axis=1)
    assert not pd.DataFrame({"k": comps["task"] + comps["metric"] + comps["language"], "pair": pair}).duplicated().any()
    readme = (root / "README.md").read_text()
    assert "Holm p" not in readme and "## The answer" in readme.split("## The run")[1].split("## The sweep's report")[0]
    for _, r in eliminated(comps, "proxy").iterrows():  # the race's eliminations are stated as such
        assert f"`{r['candidate']}` dropped in round {int(r['eliminated_in_round'])}: worse than `{r['reference']}`" in readme
