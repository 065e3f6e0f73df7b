"""Successive halving over sweep candidates, the screen against the target, and the CoT proxy.

The race runs on injected merge and evaluation functions (planted per-example scores), so every
test here is fast; one end-to-end test runs the real loop on the tiny models.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerswap.errors import ConfigError
from layerswap.sweep import build_candidates, validate_sweep_dict
from layerswap.sweep.halving import (
    BUDGET,
    FULL_SET,
    NO_SEPARATION,
    ONE_LEFT,
    HalvingPlan,
    HalvingResult,
    Unit,
    UnitStore,
    decide,
    end_round,
    round_units,
    run_halving,
    shard,
)
from layerswap.sweep.report import write_report
from layerswap.sweep.search import check_first_round, run_halving_sweep
from layerswap.sweep.selection import finalists

N = 240


def _config(**kw):
    data = {
        "base": "b",
        "math": "m",
        "lang": "l",
        "languages": ["sw"],
        "tasks": ["proxy", "mgsm"],
        "limit": 96,
        "screen": "proxy",
        "target": "mgsm",
        "candidates": {
            "search": "halving",
            "halving": {"block": 16},
            "grid": {"bottom": [1, 2, 3, 4], "top": [1, 2], "transition": [0, 1]},
            "baselines": ["base", "math", "lang", "linear"],
        },
    }
    data.update(kw)
    return validate_sweep_dict(data)


def _offset(cand) -> float:
    """Planted: swap (3, 2) best, with its transition twin equal to it; others worse by distance."""
    if cand.method == "layer_swap":
        return -0.4 * (abs(cand.bottom - 3) + abs(cand.top - 2))
    return -1.5


SHARED = np.random.default_rng(0).normal(size=N)  # example difficulty, shared by every candidate (paired)


def _block(cand, unit):
    own = np.random.default_rng(zlib.crc32(cand.name.encode())).normal(scale=0.4, size=N)
    values = _offset(cand) + SHARED + own
    ids = [f"sw-{i}" for i in range(unit.start, unit.stop)]
    return pd.DataFrame({"task": "proxy", "lang": "sw", "id": ids, "score": values[unit.start : unit.stop]})


def _target(cand, tasks):
    rng = np.random.default_rng(zlib.crc32(cand.name.encode()) + 7)
    correct = (rng.random(96) < 0.4 + 0.1 * _offset(cand)).astype(float)
    summary = pd.DataFrame([{"task": "mgsm", "language": "sw", "metric": "exact_match", "value": correct.mean()}])
    return summary, pd.DataFrame({"task": "mgsm", "lang": "sw", "id": [f"sw-{i}" for i in range(96)], "score": correct})


def _experts_lead(cand, unit):
    """The planted blocks with both experts far ahead of every swap (halving drops the swaps)."""
    frame = _block(cand, unit)
    return frame.assign(score=frame["score"] + (5.0 if cand.name in ("math", "lang") else 0.0))


def _cands(cfg):
    return build_candidates(cfg, num_layers=12)


def test_halving_keeps_the_planted_twin_and_spends_less(tmp_path):
    cfg = _config()
    cands = _cands(cfg)
    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _block, _target, log=lambda s: None)
    assert race.rounds[0].entered == [c.name for c in cands]
    assert {"swap-b3-u2", "swap-b3-u2-t1"} <= set(race.survivors)
    assert {"base", "math", "lang", "soup", "swap-b1-u1"} <= set(race.rounds[0].eliminated)
    assert race.rounds[-1].stop in (FULL_SET, ONE_LEFT, NO_SEPARATION)
    assert race.spent < len(cands) * 96 * 0.6
    # Each candidate's screen row is over the examples it was scored on; the finalists have the target too.
    screen = results[results["task"] == "proxy"].set_index("candidate")
    assert screen.loc["base", "n"] == 16 and screen.loc["swap-b3-u2", "n"] == race.rounds[-1].examples
    chosen = finalists(race, cands, cfg.finalists)
    assert {"math", "lang"} <= set(chosen) and "swap-b3-u2" in chosen and len(chosen) == 3 + 2 + 1
    assert set(results.loc[results["task"] == "mgsm", "candidate"]) == set(chosen)
    rounds = pd.read_csv(tmp_path / "halving" / "rounds.csv")
    assert set(rounds["status"]) == {"leader", "eliminated", "survives"}


def test_final_baselines_always_reach_the_target(tmp_path):
    """``final_baselines``: the soup, TIES and the base reach the target although halving drops them in round 1."""
    spec = {**_config().candidates.model_dump(), "baselines": ["base", "math", "lang", "linear", "ties"]}
    cfg = _config(candidates=spec, final_baselines=["linear", "ties", "base"], finalists=1)
    cands = _cands(cfg)
    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _block, _target, log=lambda s: None)
    assert {"soup", "ties-d0.2", "base"} <= set(race.rounds[0].eliminated)
    chosen = finalists(race, cands, cfg.finalists, cfg.final_baselines)
    plain = finalists(race, cands, cfg.finalists)
    assert {"soup", "ties-d0.2", "base"} <= set(chosen) and len({"soup", "ties-d0.2", "base"} - set(plain)) == 2
    assert set(results.loc[results["task"] == "mgsm", "candidate"]) == set(chosen)
    assert "soup" in finalists(race, cands, 1, ["soup"])  # a candidate's name works as well as its baseline name


def test_the_best_swap_reaches_the_target_when_baselines_lead(tmp_path):
    """Experts far ahead of every swap on the screen: the best swap still gets the target (it is what is asked)."""
    cfg = _config(candidates=SMALL, finalists=1)
    cands = _cands(cfg)

    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _experts_lead, _target, log=lambda s: None)
    swaps = [n for n in race.ranking() if n.startswith("swap-")]
    assert race.ranking()[0] in ("math", "lang")
    chosen = finalists(race, cands, 1)
    assert swaps[0] in chosen and not set(swaps[1:]) & set(chosen)
    assert swaps[0] in set(results.loc[results["task"] == "mgsm", "candidate"])


def test_the_report_names_the_best_swap_when_halving_drops_every_swap(tmp_path):
    """Found in the evidence run: every swap dropped in round 0 and the report said "no layer swap was
    evaluated", with no paired verdict of the best swap against the experts. The race's ranking names it."""
    cfg = _config(target=None, tasks=["proxy"], candidates=SMALL)
    cands = _cands(cfg)

    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _experts_lead, _target, log=lambda s: None)
    swaps = [n for n in race.ranking() if n.startswith("swap-")]
    assert not set(swaps) & set(race.survivors)
    written = write_report(results, cfg, len(cands), tmp_path, scores, race)
    sel, comps = written.selection, written.comparisons
    from layerswap.sweep.compare import against

    assert sel.winner in ("math", "lang") and sel.best_swap == swaps[0] and sel.best_swap_dropped
    best = against(comps, "proxy", "gold_logprob", swaps[0])  # every pair of the best swap, one row per pair
    assert set(best["reference"]) == {swaps[0]} and {"math", "lang"} <= set(best["candidate"])
    assert (best.set_index("candidate").loc[["math", "lang"], "n"] == 16).all()  # on the examples the swap had
    report = (tmp_path / "report.md").read_text()
    assert "halving dropped every layer swap" in report and f"`{swaps[0]}`" in report
    assert "no layer swap was evaluated" not in report


def test_the_best_dropped_swap_is_the_one_that_lasted_longest_not_the_best_raw_mean(tmp_path):
    """``swap-b3-u2`` keeps up in round 0 and collapses in round 1 (mean -5 over 32 examples); ``swap-b2-u2``
    is dropped in round 0 at -1 over 16. The race ranks the one that lasted longer first, and the report,
    the comparisons and the figures agree on it."""
    cfg = _config(target=None, tasks=["proxy"], candidates=SMALL)
    cands = _cands(cfg)

    def planted(cand, unit):
        own = np.random.default_rng(zlib.crc32(cand.name.encode())).normal(scale=0.3, size=N)[unit.start : unit.stop]
        idx = np.arange(unit.start, unit.stop)
        if cand.name == "swap-b3-u2":
            base = np.where(idx < 16, 0.0, -10.0)
        elif cand.name == "swap-b2-u2":
            base = np.full(len(idx), -1.0)
        elif cand.name in ("math", "lang"):
            base = np.zeros(len(idx))
        else:
            base = np.full(len(idx), -3.0)
        ids = [f"sw-{i}" for i in idx]
        return pd.DataFrame({"task": "proxy", "lang": "sw", "id": ids, "score": base + own})

    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, planted, _target, log=lambda s: None)
    assert "swap-b2-u2" in race.rounds[0].eliminated and "swap-b3-u2" in race.rounds[1].eliminated
    screen = results[results["task"] == "proxy"].set_index("candidate")["value"]
    assert screen["swap-b2-u2"] > screen["swap-b3-u2"]  # the raw means would name the other one
    written = write_report(results, cfg, len(cands), tmp_path, scores, race)
    assert written.selection.best_swap == "swap-b3-u2" and written.selection.best_swap_dropped
    comps = written.comparisons
    assert set(comps.loc[comps["role"] == "best swap", "reference"]) == {"swap-b3-u2"}
    assert "`swap-b3-u2` = " in (tmp_path / "report.md").read_text()


SMALL = {
    "search": "halving",
    "halving": {"block": 16},
    "grid": {"bottom": [2, 3], "top": [2], "transition": [0, 1]},
    "baselines": ["math", "lang"],
}


def test_the_report_shows_rounds_and_screen_against_target(tmp_path):
    cfg = _config(candidates=SMALL, finalists=1)
    cands = _cands(cfg)
    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _block, _target, log=lambda s: None)
    written = write_report(results, cfg, len(cands), tmp_path, scores, race)
    report = (tmp_path / "report.md").read_text()
    assert "## Successive halving on proxy" in report and "## Screen (proxy) against target (mgsm)" in report
    assert (tmp_path / "figures" / "halving_rounds_proxy.png").exists() and (
        tmp_path / "figures" / "halving_rounds_proxy.svg"
    ).exists()
    assert (tmp_path / "figures" / "screen_vs_target_proxy_mgsm.svg").exists()
    assert written.selection.task == "mgsm" and "Example-evaluations:" in report


def test_an_eliminated_candidate_never_leads_the_screen(tmp_path):
    """Eliminated candidates' means are over fewer examples: only the survivors may lead on the screen."""
    cfg = _config(target=None, tasks=["proxy"], candidates=SMALL)
    cands = _cands(cfg)
    results, scores, race = run_halving_sweep(cfg, cands, tmp_path, lambda c: 0.0, _block, _target, log=lambda s: None)
    boosted = results.copy()
    assert "math" in race.rounds[0].eliminated
    boosted.loc[boosted["candidate"] == "math", "value"] = 99.0
    written = write_report(boosted, cfg, len(cands), tmp_path, scores, race)
    assert written.selection.winner in race.survivors
    lead = written.comparisons[(written.comparisons["role"] == "leader")]
    assert set(lead["reference"]) <= set(race.survivors)


def test_killed_mid_round_resumes_with_identical_results(tmp_path):
    cfg = _config()
    cands = _cands(cfg)
    full, full_scores, race = run_halving_sweep(cfg, cands, tmp_path / "a", lambda c: 0.0, _block, _target, log=lambda s: None)
    assert len(race.rounds) >= 2
    kill_at = len(cands) + 2  # the third unit of round 1
    calls = {"n": 0}

    def dying(cand, unit):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        return _block(cand, unit)

    with pytest.raises(KeyboardInterrupt):
        run_halving_sweep(cfg, cands, tmp_path / "b", lambda c: 0.0, dying, _target, log=lambda s: None)
    stored = sorted(p.name for p in (tmp_path / "b" / "halving" / "units").glob("*.json"))
    assert len(stored) == kill_at - 1
    ran: list[str] = []

    def counting(cand, unit):
        ran.append(unit.name)
        return _block(cand, unit)

    again, again_scores, race_b = run_halving_sweep(
        cfg, cands, tmp_path / "b", lambda c: 0.0, counting, _target, log=lambda s: None
    )
    assert not set(ran) & {p.removesuffix(".json") for p in stored}
    assert len(ran) + len(stored) == sum(len(d.entered) for d in race.rounds)
    pd.testing.assert_frame_equal(race.table(), race_b.table())
    cols = ["candidate", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(full[cols], again[cols])
    for r in range(len(race.rounds)):
        assert (tmp_path / "a" / "halving" / f"round-{r}.json").read_text() == (
            tmp_path / "b" / "halving" / f"round-{r}.json"
        ).read_text()
    # A third run does no work at all.
    ran.clear()
    run_halving_sweep(cfg, cands, tmp_path / "b", lambda c: 0.0, counting, _target, log=lambda s: None)
    assert ran == []


def test_units_are_enumerated_once_and_shard_cleanly(tmp_path):
    plan = HalvingPlan(task="proxy", block=10, max_examples=25)
    assert plan.rounds == 3 and plan.span(2) == (20, 25)
    units = round_units(plan, 1, ["a", "b", "c", "d", "e"])
    assert [u.name for u in units] == ["a.10-20", "b.10-20", "c.10-20", "d.10-20", "e.10-20"]
    parts = [shard(units, rank, 2) for rank in range(2)]
    assert sorted(u.name for p in parts for u in p) == sorted(u.name for u in units) and not set(parts[0]) & set(parts[1])
    cfg = _config()
    cands = {c.name: c for c in _cands(cfg)[:2]}
    store = UnitStore(tmp_path, "key")
    with pytest.raises(RuntimeError, match="cannot end before all its units are done"):
        end_round(plan, store, 0, list(cands), cands, 0)


def test_budget_and_direction():
    rng = np.random.default_rng(1)
    base = rng.normal(size=60)
    scores = {
        name: pd.DataFrame(
            {
                "task": "flores",
                "lang": "sw",
                "id": [str(i) for i in range(60)],
                "score": base + shift + rng.normal(scale=0.01, size=60),
            }
        )
        for name, shift in (("good", -1.0), ("bad", 0.0), ("twin", -1.0))
    }
    lower = HalvingPlan(task="flores", block=20, max_examples=60, budget=90, higher_is_better=False)
    dec = decide(lower, 0, ["good", "bad", "twin"], {k: v.iloc[:20] for k, v in scores.items()}, spent=60, data_ended=False)
    assert dec.leader in ("good", "twin") and dec.eliminated == ["bad"]
    assert dec.stop == BUDGET  # 60 spent + 2 survivors x 20 > 90
    row = next(r for r in dec.rows if r["candidate"] == "bad")
    assert row["diff"] < 0 and row["bound"] < 0 and row["level"] == pytest.approx(0.05 / (2 * 3) / 2)  # 3 rounds, 2 directions, Holm over 2
    # Deterministic: the same scores give the same decision.
    assert (
        decide(lower, 0, ["good", "bad", "twin"], {k: v.iloc[:20] for k, v in scores.items()}, 60, False).as_dict()
        == dec.as_dict()
    )


def test_run_halving_alone_on_replayed_scores(tmp_path):
    cfg = _config()
    cands = _cands(cfg)
    plan = HalvingPlan(task="proxy", block=24, max_examples=N)
    race = run_halving(cands, plan, UnitStore(tmp_path, "k"), lambda c: 0.0, _block, log=lambda s: None)
    assert race.ranking()[0] in ("swap-b3-u2", "swap-b3-u2-t1") and race.rounds[-1].examples <= N
    assert Unit("x", 0, 0, 24).name == "x.0-24"


def test_bad_halving_configs():
    with pytest.raises(ConfigError, match="unknown search mode 'greedy': valid modes are exhaustive, halving"):
        _config(candidates={"search": "greedy"})
    with pytest.raises(ConfigError, match="screen task 'flores' is not among the sweep's tasks"):
        _config(screen="flores")
    with pytest.raises(ConfigError, match="target task 'gsm8k' is not among the sweep's tasks"):
        _config(target="gsm8k")
    with pytest.raises(ConfigError, match="finalists 0 must be at least 1"):
        _config(finalists=0)
    with pytest.raises(ConfigError, match="smaller than one block"):
        _config(candidates={"search": "halving", "halving": {"block": 200}})
    with pytest.raises(ConfigError, match="budget 10 is smaller than one block"):
        _config(candidates={"search": "halving", "halving": {"block": 16, "budget": 10}})
    cfg = _config(candidates={"search": "halving", "halving": {"block": 16, "budget": 100}})
    with pytest.raises(ConfigError, match="cannot pay for the first round"):
        check_first_round(cfg, 14)
    # Exhaustive sweeps take screen and target too (the report then correlates them over every candidate).
    assert _config(candidates={"search": "exhaustive"}).candidates.search == "exhaustive"


def test_exhaustive_report_correlates_screen_and_target(tmp_path):
    from layerswap.sweep import ResultStore, run_candidates, settings_key

    cfg = _config(candidates={"grid": {"bottom": [1, 2, 3], "top": [2], "transition": [0]}, "baselines": ["base"]})
    cands = _cands(cfg)

    def evaluate(cand):
        s = _block(cand, Unit(cand.name, 0, 0, 48))
        summary, target = _target(cand, ["mgsm"])
        summary = pd.concat(
            [summary, pd.DataFrame([{"task": "proxy", "language": "sw", "metric": "gold_logprob", "value": s["score"].mean()}])]
        )
        return summary, pd.concat([s, target], ignore_index=True)

    store = ResultStore(tmp_path, settings_key(cfg))
    results = run_candidates(cands, store, lambda c: 0.0, evaluate)
    write_report(results, cfg, len(cands), tmp_path, {c.name: store.load_scores(c) for c in cands})
    report = (tmp_path / "report.md").read_text()
    assert "## Screen (proxy) against target (mgsm)" in report and "over the 4 candidates evaluated on both" in report
    assert "Successive halving" not in report


def test_weak_screen_is_flagged(tmp_path):
    from layerswap.sweep.report import screen_target_section

    names = [f"c{i}" for i in range(6)]
    rng = np.random.default_rng(3)
    rows, scores = [], {}
    for i, name in enumerate(names):
        target = float(rng.random())
        rows.append(
            {
                "candidate": name,
                "method": "layer_swap",
                "task": "mgsm",
                "language": "sw",
                "metric": "exact_match",
                "value": target,
                "stderr": 0.1,
                "ci_low": target - 0.2,
                "ci_high": target + 0.2,
                "bottom": 1,
                "top": 1,
                "transition": 0,
                "analysis_score": None,
            }
        )
        scores[name] = pd.DataFrame({"task": "proxy", "lang": "sw", "id": ["1", "2"], "score": [float(i), float(i)]})
    lines = screen_target_section(pd.DataFrame(rows), scores, "proxy", "mgsm", tmp_path, root=tmp_path)
    assert lines[2].startswith("**Warning: the screen is a weak predictor of the target**")
    two = screen_target_section(pd.DataFrame(rows[:2]), scores, "proxy", "mgsm", tmp_path, root=tmp_path)
    assert "**Warning: the screen's agreement with the target is unknown**" in two[2]


def test_en_cot_proxy_format():
    from layerswap.evaluate.mgsm import Exemplar
    from layerswap.evaluate.tasks.proxy_cot import en_cot_prompt, en_cot_solution

    answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    assert (
        en_cot_solution(answer)
        == "Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day. The answer is 18."
    )
    assert en_cot_prompt("sw", "Swali?") == "Swali: Swali?\nStep-by-Step Answer:"
    shot = Exemplar("Swali: Q1", "Jibu la Hatua kwa Hatua: Kwanza 1. Jibu ni 1.", "1")
    assert (
        en_cot_prompt("sw", "Q2", [shot], 1)
        == "Swali: Q1\nStep-by-Step Answer: Kwanza 1. Jibu ni 1.\n\nSwali: Q2\nStep-by-Step Answer:"
    )


def test_en_cot_proxy_on_real_data(tiny_experts, data_dir):
    """MGSM's questions are GSM8K test's first 250, in order; the proxy scores blocks with an offset."""
    from layerswap.evaluate import evaluate, example_scores
    from layerswap.evaluate.tasks.gsm8k import load_rows
    from layerswap.evaluate.tasks.proxy_cot import evaluate_proxy_cot

    gsm = load_rows("test", data_dir)[:250]
    en = [line.split("\t") for line in (Path(data_dir) / "mgsm" / "mgsm_en.tsv").read_text(encoding="utf-8").splitlines()]
    assert [q.strip() for q, _ in gsm] == [row[0].strip() for row in en]
    result = evaluate(str(tiny_experts["base"]), ["proxy_cot"], ["sw"], limit=3, data_dir=str(data_dir))
    row = result.summary.iloc[0]
    assert row["task"] == "proxy_cot" and row["n"] == 3 and row["solution_logprob"] < 0 and row["stderr"] > 0
    whole = example_scores(result.records, "proxy_cot")
    part = example_scores(
        evaluate_proxy_cot(str(tiny_experts["base"]), ["sw"], limit=3, offset=1, data_dir=str(data_dir)), "proxy_cot"
    )
    assert list(part["id"]) == ["sw-1", "sw-2"]
    np.testing.assert_allclose(part["score"].to_numpy(), whole["score"].to_numpy()[1:], rtol=1e-4)


def test_halving_sweep_end_to_end_on_tiny_models(tmp_path, tiny_experts, data_dir):
    """The real loop: halving on the proxy (blocks of 2), the finalists on FLORES; a rerun resumes identically."""
    from conftest import tiny_sweep_config

    from layerswap.sweep import run_sweep

    cfg = validate_sweep_dict(
        tiny_sweep_config(
            tiny_experts,
            data_dir,
            limit=4,
            screen="proxy",
            target="flores",
            finalists=1,
            candidates={
                "search": "halving",
                "halving": {"block": 2},
                "grid": {"bottom": [1], "top": [1], "transition": [0]},
                "baselines": ["base", "math"],
            },
        )
    )
    out = tmp_path / "sweep"
    first = run_sweep(cfg, out, log=lambda s: None)
    race = first.halving
    assert race.rounds and (out / "halving" / "round-0.json").exists() and (out / "report.md").exists()
    flores = first.results[first.results["task"] == "flores"]
    assert set(flores["candidate"]) == set(finalists(race, build_candidates(cfg, 6), 1))
    again = run_sweep(cfg, out, log=lambda s: None)
    pd.testing.assert_frame_equal(race.table(), again.halving.table())
    cols = ["candidate", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(first.results[cols], again.results[cols])


def _binary(values: dict[str, list[float]]) -> dict[str, pd.DataFrame]:
    return {
        name: pd.DataFrame({"task": "mgsm", "lang": "sw", "id": [str(i) for i in range(len(v))], "score": v})
        for name, v in values.items()
    }


def test_equal_differences_use_the_exact_sign_test():
    """Two 0/1 examples, the candidate wrong on both where the leader is right: Student's t would say p = 0;
    the exact sign test says 0.25, far from any round's level, so nobody is dropped."""
    plan = HalvingPlan(task="mgsm", block=2, max_examples=20)
    dec = decide(plan, 0, ["lead", "other"], _binary({"lead": [1, 1], "other": [0, 0]}), spent=4, data_ended=False)
    row = next(r for r in dec.rows if r["candidate"] == "other")
    assert dec.eliminated == [] and row["p"] == pytest.approx(0.25)
    # Twelve such examples: p = 0.5**12 clears the level (0.05 / (2 directions x 10 rounds)), and the candidate is dropped.
    dec = decide(plan, 0, ["lead", "other"], _binary({"lead": [1] * 12, "other": [0] * 12}), spent=24, data_ended=False)
    assert dec.eliminated == ["other"]


def _size_on_tied_binary(rule, n: int, discordance: float, level: float) -> float:
    """Exact probability that ``rule(d, level)`` drops a candidate tied with the leader on ``n`` paired 0/1
    examples (each discordant with probability ``discordance``, either way alike): summed over every count
    of wins and losses (trinomial), no simulation."""
    import math

    size = 0.0
    for wins in range(n + 1):
        for losses in range(n + 1 - wins):
            prob = math.comb(n, wins) * math.comb(n - wins, losses) * (discordance / 2) ** (wins + losses) * (1 - discordance) ** (n - wins - losses)
            d = np.array([1.0] * wins + [-1.0] * losses + [0.0] * (n - wins - losses))
            size += prob * rule(d, level)
    return size


def test_the_race_bound_on_tied_binary_scores_is_exact_where_students_t_is_anti_conservative():
    """On 0/1 scores the race drops a candidate tied with the leader at most at the round's level (the exact
    sign test on the discordant examples); Student's t on the same differences, the race's bound before,
    drops it more often than the level (16 examples, half of them discordant, level 0.05 / 3 rounds / 5)."""
    from scipy import stats

    from layerswap.sweep.race_stats import paired_bound

    def exact(d, level):
        return paired_bound(d, level, binary=True)[2] < 0

    def student(d, level):
        mean, se = d.mean(), d.std(ddof=1) / np.sqrt(d.size)
        return mean < 0 and 0.5**d.size < level if se == 0 else mean + stats.t.ppf(1 - level, d.size - 1) * se < 0

    level = 0.05 / 3 / 5
    assert _size_on_tied_binary(student, 16, 0.5, level) > 1.2 * level
    for n in (8, 16, 32):
        for discordance in (0.1, 0.3, 0.5, 0.9):
            for lvl in (level, 0.0125, 0.05):
                assert _size_on_tied_binary(exact, n, discordance, lvl) <= lvl
    # The bound agrees with its p-value (the same test inverted), and it is reported in the scores' units.
    for wins, losses in ((0, 9), (1, 9), (2, 9), (3, 12)):
        d = np.array([1.0] * wins + [-1.0] * losses + [0.0] * 7)
        mean, _, bound, p = paired_bound(d, level, binary=True)
        assert (bound < 0) == (p < level) and p == pytest.approx(stats.binomtest(wins, wins + losses, 0.5, alternative="less").pvalue)
        assert mean <= bound <= (wins + losses) / d.size
    # decide() takes the exact test whenever both sides of a pair are 0/1: 7 of 16 examples lost, none won
    # (Student's t: p = 0.002, dropped; exact: p = 0.5**7 = 0.008 > 0.05 / (2 directions x 8 rounds), 1 comparison).
    plan = HalvingPlan(task="mgsm", block=16, max_examples=128)
    dec = decide(plan, 0, ["lead", "other"], _binary({"lead": [1] * 7 + [0] * 9, "other": [0] * 16}), spent=32, data_ended=False)
    row = next(r for r in dec.rows if r["candidate"] == "other")
    assert dec.eliminated == [] and row["p"] == pytest.approx(0.5**7)


def test_survivors_of_the_last_round_rank_before_those_it_dropped():
    """B is consistently a little worse than A (dropped); C is worse on average but noisy (survives): the
    finalists are the survivors, so C ranks before B although B's mean is better."""
    rng = np.random.default_rng(0)
    a, small, large = rng.normal(size=40), rng.normal(scale=0.05, size=40), rng.normal(scale=3.0, size=40)
    scores = _binary({"A": list(a), "B": list(a - 0.3 + small - small.mean()), "C": list(a - 0.5 + large - large.mean())})
    plan = HalvingPlan(task="proxy", block=40, max_examples=40)
    dec = decide(plan, 0, ["A", "B", "C"], scores, spent=120, data_ended=True)
    assert dec.eliminated == ["B"] and "C" in dec.survivors
    assert HalvingResult(plan, [dec], scores).ranking() == ["A", "C", "B"]


def test_every_search_mode_is_a_registered_strategy():
    """The config's search modes and the strategies behind the one interface are the same names."""
    from layerswap.sweep.config import SEARCH_MODES
    from layerswap.sweep.search import STRATEGIES, SearchStrategy

    assert tuple(STRATEGIES) == SEARCH_MODES and all(isinstance(s, SearchStrategy) for s in STRATEGIES.values())


def _two_tied(gap: float):
    """``a`` and ``b`` apart by ``gap`` (0: tied), ``c`` far behind; shared example effect, own noise."""

    def block(cand, unit):
        offset = {"a": 0.0, "b": -gap, "c": -3.0}[cand.name]
        own = np.random.default_rng(zlib.crc32(cand.name.encode())).normal(scale=0.5, size=N)
        values = offset + SHARED + own
        ids = [f"sw-{i}" for i in range(unit.start, unit.stop)]
        return pd.DataFrame({"task": "proxy", "lang": "sw", "id": ids, "score": values[unit.start : unit.stop]})

    return block


def test_the_race_stops_when_its_survivors_could_not_be_separated(tmp_path):
    """Tied survivors: even an optimistic difference (2 standard errors beyond the observed one) would need
    more than max_examples, so the race stops before its last round, says why with the figures, records it,
    and a rerun decides the same."""
    from layerswap.sweep.config import Candidate

    cands = [Candidate(name=n, method="linear", params={"n": n}) for n in ("a", "b", "c")]
    plan = HalvingPlan(task="proxy", block=16, max_examples=64)
    lines: list[str] = []
    race = run_halving(cands, plan, UnitStore(tmp_path / "tied", "k"), lambda c: 0.0, _two_tied(0.0), log=lines.append)
    first, last = race.rounds[0], race.rounds[-1]
    assert len(race.rounds) < plan.rounds and first.eliminated == ["c"] and last.stop == NO_SEPARATION
    assert last.closest["needed"] > 64 and {last.closest["a"], last.closest["b"]} == {"a", "b"}
    assert f"stop: {NO_SEPARATION}=64: `a` vs `b` needs ~{int(last.closest['needed'])} examples" in lines[-1]
    assert last.stop_line == last.note and "needs ~" in last.note
    assert race.spent == 3 * 16 + 2 * 16 * (len(race.rounds) - 1)
    # Resumed from the store: no unit runs again and every decision (with its figures) is the same.
    ran: list[str] = []

    def counting(cand, unit):
        ran.append(unit.name)
        return _two_tied(0.0)(cand, unit)

    again = run_halving(cands, plan, UnitStore(tmp_path / "tied", "k"), lambda c: 0.0, counting, log=lambda s: None)
    assert ran == [] and [d.as_dict() for d in again.rounds] == [d.as_dict() for d in race.rounds]
    # A gap the allowed examples can detect: the race goes on past round 0 and drops b later.
    apart = run_halving(cands, plan, UnitStore(tmp_path / "apart", "k"), lambda c: 0.0, _two_tied(0.2), log=lambda s: None)
    assert apart.rounds[0].stop is None and apart.rounds[0].closest["needed"] <= 64
    assert apart.survivors == ["a"] and apart.rounds[-1].stop == ONE_LEFT


def test_the_race_judges_a_pair_hopeless_on_an_optimistic_difference():
    """The early stop asks how many examples a difference 1.96 standard errors beyond the observed one would
    need: never more than the observed difference needs (a noisy small first gap does not end the race),
    and no judgement at all from differences without spread."""
    from layerswap.power import examples_needed
    from layerswap.sweep.race_stats import optimistic_needed

    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(size=12)
        y = x + rng.normal(loc=0.05, scale=1.0, size=12)
        assert optimistic_needed(x, y, level=0.01) <= examples_needed(x, y, level=0.01)
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    b = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])  # observed difference 0: inf examples observed
    assert examples_needed(a, b) == float("inf") and optimistic_needed(a, b, level=0.05) < float("inf")
    assert np.isnan(optimistic_needed(a, a + 1.0, level=0.05))
