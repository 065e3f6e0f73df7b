"""The sweep's candidate list, resumable store and report, with injected merge and evaluation."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from layerswap.errors import ConfigError
from layerswap.sweep import (
    ResultStore,
    build_candidates,
    run_candidates,
    settings_key,
    validate_sweep_dict,
)
from layerswap.sweep.compare import compare_candidates
from layerswap.sweep.figures import write_figures
from layerswap.sweep.report import report_markdown
from layerswap.sweep.selection import select
from layerswap.sweep.verdicts import verdict_lines


def _config(tmp_path: Path, **kw):
    data = {"base": "b", "math": "m", "lang": "l", "languages": ["sw", "bn"], "tasks": ["proxy"]}
    data.update(kw)
    return validate_sweep_dict(data)


def _offset(cand, best=(3, 2)) -> float:
    """A metric built to prefer the swap (3, 2): minus the distance to it; baselines score low."""
    if cand.method == "layer_swap":
        return -abs(cand.bottom - best[0]) - abs(cand.top - best[1])
    return -5.0 - len(cand.name) / 100


def _fake_eval(best=(3, 2), n=24, noise=0.3):
    """Per-example proxy scores: the candidate's offset, an example effect shared by every candidate
    (so comparisons are paired), and the candidate's own noise; the summary is their mean."""

    def evaluate(cand):
        rows, scores = [], []
        for lang in ("sw", "bn"):
            shared = np.random.default_rng(len(lang)).normal(size=n)
            own = np.random.default_rng(zlib.crc32(f"{cand.name}-{lang}".encode())).normal(scale=noise, size=n)
            values = _offset(cand, best) + (0.1 if lang == "sw" else 0.0) + shared + own
            scores += [{"task": "proxy", "lang": lang, "id": f"mgsm-{lang}-{i}", "score": v} for i, v in enumerate(values)]
            rows.append({"task": "proxy", "language": lang, "metric": "gold_logprob", "value": float(values.mean())})
        return pd.DataFrame(rows), pd.DataFrame(scores)

    return evaluate


def _scores(store, cands):
    return {c.name: store.load_scores(c) for c in cands}


def test_candidates_from_boundaries_grid_and_baselines(tmp_path):
    boundaries = tmp_path / "boundaries.yaml"
    boundaries.write_text(yaml.safe_dump({"bottom": 3, "top": 2, "candidates": [
        {"bottom": 3, "top": 2, "transition": 0, "score": 0.9},
        {"bottom": 4, "top": 2, "transition": 0, "score": 0.7},
    ]}))
    cfg = _config(tmp_path, candidates={"boundaries": str(boundaries), "grid": {"bottom": [2, 3], "top": [2], "transition": [0]}})
    cands = build_candidates(cfg, num_layers=18)
    names = [c.name for c in cands]
    assert names[:3] == ["swap-b3-u2", "swap-b4-u2", "swap-b2-u2"]
    assert {"base", "math", "lang", "soup", "ties-d0.2"} <= set(names)
    assert any(n.startswith("revert-m3-") for n in names)
    assert cands[0].analysis_score == 0.9


def test_bad_sweep_configs(tmp_path):
    with pytest.raises(ConfigError, match="unknown baseline"):
        _config(tmp_path, candidates={"baselines": ["magic"]})
    with pytest.raises(ConfigError, match="unknown key"):
        _config(tmp_path, bogus=1)
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [10], "top": [9], "transition": [0]}, "baselines": []})
    with pytest.raises(ConfigError, match="no middle layer"):
        build_candidates(cfg, num_layers=18)


def test_resume_after_interruption_gives_identical_results(tmp_path):
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2, 3, 4], "top": [1, 2], "transition": [0]}})
    cands = build_candidates(cfg, num_layers=12)
    merges: list[str] = []

    def merge(c):
        merges.append(c.name)
        return 0.001

    full = run_candidates(cands, ResultStore(tmp_path / "a", settings_key(cfg)), merge, _fake_eval())

    calls = {"n": 0}

    def dying_eval(c):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return _fake_eval()(c)

    store = ResultStore(tmp_path / "b", settings_key(cfg))
    with pytest.raises(KeyboardInterrupt):
        run_candidates(cands, store, merge, dying_eval)
    assert len(list((tmp_path / "b" / "candidates").glob("*.json"))) == 3
    assert len(list((tmp_path / "b" / "candidates").glob("*.scores.csv"))) == 3
    merges.clear()
    resumed = run_candidates(cands, store, merge, _fake_eval())
    assert len(merges) == len(cands) - 3
    cols = ["candidate", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])
    assert full["stderr"].notna().all() and (full["n"] == 24).all()
    # The paired comparisons, recomputed from the stored per-example scores, are identical too.
    tasks = [("proxy", "gold_logprob")]
    first = compare_candidates(full, _scores(ResultStore(tmp_path / "a", settings_key(cfg)), cands), tasks)
    again = compare_candidates(resumed, _scores(store, cands), tasks)
    assert len(first) and first["p_adjusted"].notna().all()
    pd.testing.assert_frame_equal(first, again)


def test_a_stored_extra_metric_with_its_own_interval_is_reused(tmp_path):
    """A task's extra metric (language fidelity beside MGSM's exact match) is stored with its own n and
    interval; reading the record back checks only the headline rows against the per-example scores
    (the quick demo's finalists once failed here with 'does not match its scores')."""
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2], "top": [1], "transition": [0]}, "baselines": ["base"]})
    cands = build_candidates(cfg, 12)
    base_eval = _fake_eval(n=5)

    def with_fidelity(cand):
        rows, scores = base_eval(cand)
        extra = rows.assign(metric="lang_fidelity", value=0.8, stderr=0.1, ci_low=0.5, ci_high=0.95, n=5)
        return pd.concat([rows, extra], ignore_index=True), scores

    store = ResultStore(tmp_path, settings_key(cfg))
    first = run_candidates(cands, store, lambda c: 0.0, with_fidelity)
    assert (first[first["metric"] == "lang_fidelity"]["n"] == 5).all()
    again = run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), lambda c: pytest.fail("re-merged"), with_fidelity)
    pd.testing.assert_frame_equal(first, again)


def test_scores_are_stored_beside_the_json_and_checked(tmp_path):
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2], "top": [1], "transition": [0]}, "baselines": ["base"]})
    cands = build_candidates(cfg, 12)
    store = ResultStore(tmp_path, settings_key(cfg))
    results = run_candidates(cands, store, lambda c: 0.0, _fake_eval(n=5))
    path = store.scores_path(cands[0])
    assert path.name == "swap-b2-u1.scores.csv"
    back = store.load_scores(cands[0])
    assert list(back.columns) == ["task", "lang", "id", "score", "num", "den"] and len(back) == 10
    assert back["id"].map(type).eq(str).all() and back["num"].isna().all()
    # The stored rows' statistics are those of the stored scores: mean, stderr (ddof 1), normal interval.
    sw = back[back["lang"] == "sw"]["score"]
    row = results[(results["candidate"] == cands[0].name) & (results["language"] == "sw")].iloc[0]
    assert row["value"] == pytest.approx(sw.mean()) and row["stderr"] == pytest.approx(sw.std(ddof=1) / np.sqrt(5))
    assert row["ci_low"] == pytest.approx(sw.mean() - 1.959964 * row["stderr"], rel=1e-6)
    # A scores file that is not the one its rows were computed from: the candidate runs again.
    path.write_text(path.read_text().replace("mgsm-sw-0", "mgsm-sw-9"))
    assert store.load(cands[0]) is None and store.load_scores(cands[0]) is None
    path.unlink()
    assert store.load(cands[0]) is None


def test_paired_comparisons_and_verdict(tmp_path):
    """A planted twin of the best swap is indistinguishable from it; the baselines are beaten."""
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2, 3], "top": [2], "transition": [0, 1]}, "baselines": ["base", "math"]})
    cands = build_candidates(cfg, num_layers=12)
    results = run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), lambda c: 0.0, _fake_eval())
    comps = compare_candidates(results, _scores(ResultStore(tmp_path, settings_key(cfg)), cands), [("proxy", "gold_logprob")])
    lead = comps[(comps["role"] == "leader") & (comps["language"] == "all")].set_index("candidate")
    assert set(comps["language"]) == {"all", "sw", "bn"}
    ref = lead["reference"].iloc[0]
    assert ref in ("swap-b3-u2", "swap-b3-u2-t1")
    twin = ({"swap-b3-u2", "swap-b3-u2-t1"} - {ref}).pop()
    assert lead.loc[twin, "verdict"] == "indistinguishable" and lead.loc[twin, "ci_low"] < 0 < lead.loc[twin, "ci_high"]
    for loser in ("swap-b2-u2", "base", "math"):
        assert lead.loc[loser, "verdict"] == "worse" and lead.loc[loser, "ci_high"] < 0 and lead.loc[loser, "test"] == "permutation"
    assert (lead["p_adjusted"] >= lead["p_value"]).all()
    # The experts and baselines meet each other once (one family per task and scope, one verdict per pair).
    math_base = comps[(comps["language"] == "all") & comps["reference"].isin(["base", "math"]) & comps["candidate"].isin(["base", "math"])]
    assert len(math_base) == 1 and math_base["role"].iloc[0] in ("expert", "baseline")
    text = " ".join(verdict_lines(comps, "proxy", "gold_logprob"))
    assert "Not a clear winner" in text and f"`{twin}`" in text and "Bonferroni" in text
    assert "beats the baseline `base`" in text and "beats the expert `math`" in text
    report = report_markdown(results, select(results, "proxy", "gold_logprob"), {}, root=tmp_path, comparisons=comps)
    assert "indistinguishable" in report and "Paired comparisons with the leader" in report and "Bonferroni" in report


def test_binary_and_ratio_scores_use_mcnemar_and_the_ratio_bootstrap(tmp_path):
    cfg = _config(tmp_path, tasks=["mgsm", "flores"], languages=["sw"], candidates={"grid": {"bottom": [2, 3], "top": [1], "transition": [0]}, "baselines": ["base"]})
    cands = build_candidates(cfg, 12)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=40)
    bytes_ = rng.integers(40, 120, size=40).astype(float)

    def evaluate(cand):
        flip = np.random.default_rng(zlib.crc32(cand.name.encode())).random(40) < (0.1 if cand.name != "base" else 0.5)
        correct = np.where(flip, 1 - truth, truth).astype(float)
        bits = bytes_ * (1.0 + 0.3 * (cand.name == "base")) + np.random.default_rng(zlib.crc32(cand.name.encode())).normal(scale=3, size=40)
        scores = pd.concat([
            pd.DataFrame({"task": "mgsm", "lang": "sw", "id": [f"m{i}" for i in range(40)], "score": correct}),
            pd.DataFrame({"task": "flores", "lang": "swh", "id": [f"f{i}" for i in range(40)], "score": bits / bytes_, "num": bits, "den": bytes_}),
        ])
        summary = pd.DataFrame([
            {"task": "mgsm", "language": "sw", "metric": "exact_match", "value": correct.mean()},
            {"task": "flores", "language": "swh", "metric": "bits_per_byte", "value": bits.sum() / bytes_.sum()},
        ])
        return summary, scores

    store = ResultStore(tmp_path, settings_key(cfg))
    results = run_candidates(cands, store, lambda c: 0.0, evaluate)
    flores = results[results["task"] == "flores"]
    assert (flores["ci_low"] < flores["value"]).all() and (flores["value"] < flores["ci_high"]).all() and (flores["n"] == 40).all()
    comps = compare_candidates(results, _scores(store, cands), [("mgsm", "exact_match"), ("flores", "bits_per_byte")])
    assert set(comps.loc[comps["task"] == "mgsm", "test"]) == {"newcombe"}
    assert set(comps.loc[comps["task"] == "flores", "test"]) == {"bootstrap"}
    base_vs_lead = comps[(comps["task"] == "flores") & (comps["role"] == "leader") & (comps["candidate"] == "base")].iloc[0]
    assert base_vs_lead["verdict"] == "worse" and base_vs_lead["diff"] > 0  # lower bits per byte is better


def test_changed_settings_are_not_reused(tmp_path):
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2], "top": [1], "transition": [0]}, "baselines": []})
    cands = build_candidates(cfg, 12)
    run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), lambda c: 0.0, _fake_eval())
    other = _config(tmp_path, limit=5, candidates={"grid": {"bottom": [2], "top": [1], "transition": [0]}, "baselines": []})
    assert ResultStore(tmp_path, settings_key(other)).load(cands[0]) is None
    assert ResultStore(tmp_path, settings_key(cfg)).load(cands[0]) is not None


def test_selection_and_figures(tmp_path):
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2, 3, 4], "top": [1, 2, 3], "transition": [0]}})
    cands = build_candidates(cfg, num_layers=12)
    for c in cands:
        if c.method == "layer_swap":
            c.analysis_score = -abs(c.bottom - 3) - abs(c.top - 2) * 0.9
    results = run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), lambda c: 0.0, _fake_eval())
    sel = select(results, "proxy", "gold_logprob")
    assert sel.winner == "swap-b3-u2"
    assert sel.best_baseline is not None and sel.margin_over_baseline > 0
    assert not sel.winner_is_baseline and sel.comparison().startswith("Best baseline: ")
    base_wins = results.copy()
    base_wins.loc[base_wins["candidate"] == "base", "value"] = 10.0  # higher is better for the proxy
    sel = select(base_wins, "proxy", "gold_logprob")
    assert sel.winner == "base" and sel.winner_is_baseline and sel.best_swap == "swap-b3-u2"
    assert sel.comparison().startswith("The leader is a baseline: no layer swap has a better mean. Best layer swap: `swap-b3-u2`")
    comps = compare_candidates(results, _scores(ResultStore(tmp_path, settings_key(cfg)), cands), [("proxy", "gold_logprob")])
    drawn = write_figures(results, tmp_path / "fig", [("proxy", "gold_logprob")], comps)
    info = drawn["proxy-gold_logprob"]
    for key in ("heatmap", "bars", "scatter"):
        assert Path(info[key]).exists() and Path(info[key]).with_suffix(".svg").exists()
    assert info["rho"] is not None and info["rho"] > 0.8
    low, high, n = info["rho_ci"]
    assert n == 9 and low <= info["rho"] <= high <= 1.0


def test_run_sweep_end_to_end_on_tiny_models(tmp_path, tiny_experts, data_dir):
    """Real merge (in memory) and real evaluation (proxy on MGSM-sw, FLORES-sw) on the tiny Llama."""
    from conftest import tiny_sweep_config

    from layerswap.sweep import run_sweep

    cfg = validate_sweep_dict(tiny_sweep_config(tiny_experts, data_dir, save_best=True))
    out = tmp_path / "sweep"
    first = run_sweep(cfg, out, log=lambda s: None)
    results = pd.read_csv(out / "results.csv")
    assert set(results["candidate"]) == {"swap-b1-u1", "swap-b2-u1", "base", "math", "ties-d0.2"}
    assert set(results["metric"]) >= {"gold_logprob", "bits_per_byte"}
    assert results["value"].notna().all()
    report = (out / "report.md").read_text()
    assert report.count("![") >= 4 and "Paired comparisons with" in report and "Bonferroni" in report
    comps = pd.read_csv(out / "comparisons.csv")
    assert set(comps["task"]) == {"proxy", "flores"} and comps["n"].eq(2).all()
    assert (out / "candidates" / "base.scores.csv").exists() and results["stderr"].notna().any()
    assert (out / "best-model" / "config.json").exists()
    # The base candidate must equal the base model evaluated on its own (in-memory merge is exact).
    from layerswap.evaluate import evaluate

    alone = evaluate(str(tiny_experts["base"]), ["flores"], ["sw"], limit=2, data_dir=str(data_dir)).summary
    base_bpb = results[(results.candidate == "base") & (results.metric == "bits_per_byte")]["value"].item()
    assert abs(base_bpb - float(alone["bits_per_byte"].iloc[0])) < 1e-4
    # A rerun resumes from the stored candidates and gives the same table.
    again = run_sweep(cfg, out, log=lambda s: None)
    cols = ["candidate", "task", "language", "metric", "value", "stderr", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(first.results[cols], again.results[cols])
    pd.testing.assert_frame_equal(first.comparisons, again.comparisons)


def test_verdict_wording_for_every_case():
    def row(cand, method, verdict, diff=-1.0, p=0.01):
        return {"task": "flores", "metric": "bits_per_byte", "language": "all", "reference": "swap-b1-u1", "role": "leader",
                "candidate": cand, "method": method, "diff": diff, "ci_low": diff - 0.5, "ci_high": diff + 0.5,
                "level": 0.05, "p_value": p, "p_adjusted": p, "test": "permutation", "n": 12, "verdict": verdict,
                "examples_needed": 30.0, "nonfinite_examples": 0, "eliminated_in_round": float("nan")}

    comps = pd.DataFrame([row("swap-b2-u1", "layer_swap", "better", -0.2), row("base", "identity", "worse", 1.0), row("lang", "identity", "undetermined", 0.1, float("nan"))])
    text = "\n".join(verdict_lines(comps, "flores", "bits_per_byte"))
    assert "is the winner" not in text and "significantly better than `swap-b1-u1`: `swap-b2-u1`" in text
    assert "indistinguishable from `swap-b1-u1` at this sample size: `lang`" in text and "Significantly worse than it: `base`" in text
    assert "beats the baseline `base` (diff -1" in text and "cannot be compared (too few examples) with the expert `lang`" in text
    assert "No per-example scores" in verdict_lines(comps.iloc[:0], "flores", "bits_per_byte")[0]
    only_worse = pd.DataFrame([row("base", "identity", "worse", 1.0)])
    assert "`swap-b1-u1` is the winner: every other candidate is significantly worse." in verdict_lines(only_worse, "flores", "bits_per_byte")


def test_an_overflowing_candidate_does_not_stop_the_sweep(tmp_path):
    """A candidate with NaN/Inf scores (an expert with an Inf weight) keeps its rows, with NaN stderr
    and interval and a warning; the paired comparisons drop its non-finite pairs and count them."""
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2, 3], "top": [2], "transition": [0]}, "baselines": ["base", "math"]})
    cands = build_candidates(cfg, num_layers=12)
    fake = _fake_eval()

    def evaluate(cand):
        summary, scores = fake(cand)
        if cand.name == "math":  # overflowed on 3 of its 24 examples per language
            bad = scores.groupby("lang").head(3).index
            scores.loc[bad, "score"] = [float("inf"), -float("inf"), float("nan")] * 2
            summary["value"] = scores.groupby("lang", sort=False)["score"].mean().to_numpy()
        return summary, scores

    store = ResultStore(tmp_path, settings_key(cfg))
    with pytest.warns(RuntimeWarning, match=r"proxy (sw|bn): 3 of 24 examples have a NaN or infinite score"):
        results = run_candidates(cands, store, lambda c: 0.0, evaluate)
    math_rows = results[results["candidate"] == "math"]
    assert len(math_rows) == 2 and math_rows[["stderr", "ci_low", "ci_high"]].isna().all().all() and (math_rows["n"] == 24).all()
    others = results[results["candidate"] != "math"]
    assert others[["stderr", "ci_low", "ci_high"]].notna().all().all()
    with pytest.warns(RuntimeWarning, match=r"proxy \(all languages\): NaN or infinite scores of math \(6 examples\)"):
        comps = compare_candidates(results, _scores(store, cands), [("proxy", "gold_logprob")])
    vs_math = comps[(comps["candidate"] == "math") | (comps["reference"] == "math")]
    assert len(vs_math) and (vs_math.loc[vs_math["language"] == "all", "nonfinite_examples"] == 6).all()
    assert (vs_math.loc[vs_math["language"] == "all", "n"] == 42).all() and vs_math["diff"].map(np.isfinite).all()
    assert (comps.loc[(comps["candidate"] != "math") & (comps["reference"] != "math"), "nonfinite_examples"] == 0).all()
    write_figures(results, tmp_path / "fig", [("proxy", "gold_logprob")], comps)
    report_markdown(results, select(results, "proxy", "gold_logprob"), {}, root=tmp_path, comparisons=comps)


def test_verdict_colours_in_the_paired_panel():
    """Only "better" is green and only "worse" red: undetermined (or missing) is grey, like indistinguishable."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from layerswap.sweep.figures import _paired_panel, verdict_colour

    assert [verdict_colour(v) for v in ("better", "worse", "indistinguishable", "undetermined", float("nan"))] == [
        "tab:green", "tab:red", "tab:gray", "tab:gray", "tab:gray"]
    verdicts = {"a": "better", "b": "worse", "c": "indistinguishable", "d": "undetermined"}
    paired = pd.DataFrame([{"candidate": c, "diff": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p_adjusted": float("nan") if v == "undetermined" else 0.01,
                            "verdict": v} for c, v in verdicts.items()]).set_index("candidate")
    fig, ax = plt.subplots()
    try:
        _paired_panel(ax, paired, list(verdicts), "gold_logprob", "best")
        drawn = [to_hex(line.get_color()) for line in ax.lines if line.get_marker() == "s"]
    finally:
        plt.close(fig)
    assert drawn == [to_hex(c) for c in ("tab:green", "tab:red", "tab:gray", "tab:gray")]


def test_settings_key_resolves_paths(tmp_path, monkeypatch):
    """The same folders spelled relative or absolute are one sweep: a rerun resumes instead of redoing its work."""
    from layerswap.sweep import validate_sweep_dict
    from layerswap.sweep.resume import settings_key

    for name in ("data", "m", "l"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    rel = validate_sweep_dict({"base": "gemma3-270m", "math": "m", "lang": "./l", "data_dir": "data"})
    absolute = validate_sweep_dict({"base": "gemma3-270m", "math": str(tmp_path / "m"), "lang": str(tmp_path / "l"), "data_dir": str(tmp_path / "data")})
    other = validate_sweep_dict({"base": "gemma3-270m", "math": "m", "lang": "./l", "data_dir": str(tmp_path / "m")})
    assert settings_key(rel) == settings_key(absolute) != settings_key(other)


def test_the_best_swap_is_the_leader_when_a_swap_leads():
    """One place decides: the leader, the best swap (the leader itself when a swap leads, else the best swap
    by mean) and the best baseline, pooled and per language; the comparisons take their references from it."""
    from layerswap.sweep.selection import decide

    rows = [
        {"candidate": c, "method": m, "task": "proxy", "language": lang, "metric": "gold_logprob", "value": v + (0.3 if lang == "bn" and c == "swap-b2-u2" else 0)}
        for c, m, v in (("swap-b3-u2", "layer_swap", -1.0), ("swap-b2-u2", "layer_swap", -1.2), ("base", "identity", -2.0), ("soup", "linear", -1.1))
        for lang in ("sw", "bn")
    ]
    results = pd.DataFrame(rows)
    decisions = decide(results, [("proxy", "gold_logprob")])
    pooled, bn = decisions.get("proxy"), decisions.get("proxy", "bn")
    assert (pooled.leader, pooled.best_swap, pooled.best_baseline) == ("swap-b3-u2", "swap-b3-u2", "soup")
    assert (bn.leader, bn.best_swap, bn.best_baseline) == ("swap-b2-u2", "swap-b2-u2", "soup")
    base_leads = results.assign(value=results["value"].where(results["candidate"] != "base", 0.0))
    pooled = decide(base_leads, [("proxy", "gold_logprob")]).get("proxy")
    assert (pooled.leader, pooled.best_swap, pooled.best_baseline) == ("base", "swap-b3-u2", "soup")
    assert decisions.get("flores") is None


def test_every_sweep_setting_says_whether_it_changes_results():
    """The resume key reads the fields' own marks; cache_dtype changes blended weights, so it counts."""
    from layerswap.sweep.config import SweepConfig
    from layerswap.sweep.resume import result_fields

    fields = result_fields(SweepConfig)
    assert "cache_dtype" in fields and "batch_size" not in fields and "candidates" not in fields


def test_a_changed_cache_dtype_is_evaluated_again(tmp_path):
    """Stored results made with cache_dtype float32 are not reused for cache_dtype model, and the run says why."""
    cfg = _config(tmp_path, candidates={"grid": {"bottom": [2, 3], "top": [1], "transition": [0]}, "baselines": ["base"]})
    cands = build_candidates(cfg, num_layers=12)
    merged: list[str] = []
    said: list[str] = []

    def merge(c):
        merged.append(c.name)
        return 0.0

    run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), merge, _fake_eval(), log=said.append)
    assert said == [] and len(merged) == 3
    merged.clear()
    run_candidates(cands, ResultStore(tmp_path, settings_key(cfg)), merge, _fake_eval(), log=said.append)
    assert merged == [] and said == ["resuming: 3 of 3 candidates stored, 0 to evaluate"]
    other = cfg.model_copy(update={"cache_dtype": "model"})
    said.clear()
    run_candidates(cands, ResultStore(tmp_path, settings_key(other)), merge, _fake_eval(), log=said.append)
    assert merged == [c.name for c in cands]
    assert said == ["resuming: 0 of 3 candidates stored, 3 to evaluate; 3 stored with other settings or inputs (settings changed): evaluated again"]


def test_a_retrained_expert_in_the_same_folder_is_evaluated_again(tmp_path, tiny_experts, data_dir):
    """Retrain the math expert into the folder the sweep read, rerun into the same DIR: every candidate is
    evaluated again (none reuses the old expert's scores) and the run says that the math expert changed."""
    import shutil

    from conftest import tiny_sweep_config

    from layerswap.sweep import run_sweep
    from layerswap.testing import planted_expert

    math = tmp_path / "math"
    shutil.copytree(tiny_experts["math"], math)
    experts = {**tiny_experts, "math": math}
    cfg = validate_sweep_dict(tiny_sweep_config(experts, data_dir, tasks=["proxy"], candidates={
        "grid": {"bottom": [1], "top": [1], "transition": [0]}, "baselines": ["base", "math"]}))
    out = tmp_path / "sweep"
    said: list[str] = []
    first = run_sweep(cfg, out, log=said.append)
    said.clear()
    run_sweep(cfg, out, log=said.append)  # unchanged: everything reused
    assert "resuming: 3 of 3 candidates stored, 0 to evaluate" in said
    planted_expert(tiny_experts["base"], tmp_path / "retrained", layers=[2, 3, 4], scale=0.5, noise=0.05, seed=11)
    shutil.rmtree(math)
    (tmp_path / "retrained").rename(math)  # retrained into the same folder (as finetune --overwrite does)
    said.clear()
    again = run_sweep(cfg, out, log=said.append)
    assert "resuming: 0 of 3 candidates stored, 3 to evaluate; 3 stored with other settings or inputs (math changed): evaluated again" in said
    def values(result):
        table = result.results
        return table[table["metric"] == "gold_logprob"].set_index("candidate")["value"]

    before, after = values(first), values(again)
    assert before["base"] == after["base"] and before["math"] != after["math"] and before["swap-b1-u1"] != after["swap-b1-u1"]


def test_the_task_spec_aggregates_means_and_ratios():
    """One aggregation per task: a mean metric's mean with its interval, a ratio's sum over sum with its bootstrap."""
    from layerswap.evaluate.tasks import get_task
    from layerswap.evaluate.uncertainty import mean_columns, ratio_columns

    logprobs = pd.DataFrame({"task": "proxy", "lang": "sw", "id": ["0", "1", "2"], "score": [-1.0, -2.0, -4.5]})
    got = get_task("proxy").aggregate(logprobs, lang="sw")
    assert got == {"value": -2.5, **mean_columns([-1.0, -2.0, -4.5]), "n": 3}
    bits = pd.DataFrame({"task": "flores", "lang": "swh", "id": ["0", "1"], "score": [2.0, 1.0], "num": [20.0, 30.0], "den": [10.0, 30.0]})
    got = get_task("flores").aggregate(bits, lang="swh")
    assert got == {"value": 50.0 / 40.0, **ratio_columns([20.0, 30.0], [10.0, 30.0]), "n": 2}
    assert get_task("proxy").scores_blocks and not get_task("flores").scores_blocks


def test_candidates_that_merge_to_the_same_weights_are_evaluated_once(tmp_path, tiny_experts, data_dir, monkeypatch):
    """Experts trained with frozen embeddings (their non-layer tensors are the base's): the revert that keeps
    the swap's middle from the math expert is the swap's own model. One evaluation, both names reported with
    its scores, and the run and the report say so."""
    from conftest import tiny_sweep_config

    from layerswap.sweep import run_sweep
    from layerswap.sweep.loop import InMemorySweep
    from layerswap.testing import planted_expert

    experts = {
        "base": tiny_experts["base"],
        "math": planted_expert(tiny_experts["base"], tmp_path / "math", layers=[2, 3, 4], scale=0.05, seed=1),
        "lang": planted_expert(tiny_experts["base"], tmp_path / "lang", layers=[0, 1, 5], scale=0.05, seed=2),
    }

    runs: list[str] = []
    real = InMemorySweep._evaluate_model
    monkeypatch.setattr(InMemorySweep, "_evaluate_model", lambda self, tasks, limit: runs.append("x") or real(self, tasks, limit))
    cfg = validate_sweep_dict(tiny_sweep_config(experts, data_dir, tasks=["proxy"], candidates={
        "grid": {"bottom": [1], "top": [1], "transition": [0]}, "baselines": ["base", "revert"]}))
    said: list[str] = []
    result = run_sweep(cfg, tmp_path / "sweep", log=said.append)
    revert = next(c for c in result.results["candidate"].unique() if c.startswith("revert-"))
    assert f"same merged weights as swap-b1-u1, evaluated once: {revert}" in said and len(runs) == 2
    values = result.results[result.results["metric"] == "gold_logprob"].set_index("candidate")["value"]
    assert values["swap-b1-u1"] == values[revert] != values["base"]
    assert f"`swap-b1-u1` = `{revert}`" in (tmp_path / "sweep" / "report.md").read_text()


def test_an_extra_metric_keeps_the_interval_its_task_computed():
    # Language fidelity rides beside MGSM exact match with its own interval: results.csv keeps it.
    from layerswap.sweep.loop import tidy_summary

    summary = pd.DataFrame([{"task": "mgsm", "lang": "sw", "exact_match": 0.0, "stderr": 0.0, "ci_low": 0.0, "ci_high": 0.56,
                             "n": 3, "lang_fidelity": 2 / 3, "lang_fidelity_ci_low": 0.2, "lang_fidelity_ci_high": 0.94,
                             "cot_fidelity": 0.6}])
    rows = tidy_summary(summary).set_index("metric")
    assert rows.loc["lang_fidelity", "ci_low"] == 0.2 and rows.loc["lang_fidelity", "ci_high"] == 0.94
    assert rows.loc["lang_fidelity", "n"] == 3
    assert pd.isna(rows.loc["cot_fidelity", "ci_low"])  # no interval given: none invented
