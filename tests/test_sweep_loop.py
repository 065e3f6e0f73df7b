"""The sweep's candidate list, resumable store and report, with injected merge and evaluation."""

from __future__ import annotations

from pathlib import Path

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
from layerswap.sweep.report import select, write_figures


def _config(tmp_path: Path, **kw):
    data = {"base": "b", "math": "m", "lang": "l", "languages": ["sw", "bn"], "tasks": ["proxy"]}
    data.update(kw)
    return validate_sweep_dict(data)


def _fake_eval(best=(3, 2)):
    """A metric built to prefer the swap (3, 2): minus the distance to it; baselines score low."""

    def evaluate(cand):
        rows = []
        for lang in ("sw", "bn"):
            if cand.method == "layer_swap":
                value = -abs(cand.bottom - best[0]) - abs(cand.top - best[1]) + (0.1 if lang == "sw" else 0.0)
            else:
                value = -5.0 - len(cand.name) / 100
            rows.append({"task": "proxy", "language": lang, "metric": "gold_logprob", "value": value})
        return pd.DataFrame(rows)

    return evaluate


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
    merges.clear()
    resumed = run_candidates(cands, store, merge, _fake_eval())
    assert len(merges) == len(cands) - 3
    cols = ["candidate", "task", "language", "metric", "value"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


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
    assert sel.comparison().startswith("The winner is a baseline: no layer swap beat it. Best layer swap: `swap-b3-u2`")
    drawn = write_figures(results, tmp_path / "fig", [("proxy", "gold_logprob")])
    info = drawn["proxy-gold_logprob"]
    for key in ("heatmap", "bars", "scatter"):
        assert Path(info[key]).exists() and Path(info[key]).with_suffix(".svg").exists()
    assert info["rho"] is not None and info["rho"] > 0.8


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
    assert (out / "report.md").read_text().count("![") >= 4
    assert (out / "best-model" / "config.json").exists()
    # The base candidate must equal the base model evaluated on its own (in-memory merge is exact).
    from layerswap.evaluate import evaluate

    alone = evaluate(str(tiny_experts["base"]), ["flores"], ["sw"], limit=2, data_dir=str(data_dir)).summary
    base_bpb = results[(results.candidate == "base") & (results.metric == "bits_per_byte")]["value"].item()
    assert abs(base_bpb - float(alone["bits_per_byte"].iloc[0])) < 1e-4
    # A rerun resumes from the stored candidates and gives the same table.
    again = run_sweep(cfg, out, log=lambda s: None)
    cols = ["candidate", "task", "language", "metric", "value"]
    pd.testing.assert_frame_equal(first["results"][cols], again["results"][cols])
