"""The lens table: each lens's score of every evaluated swap against the swap's paired outcome."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st

from layerswap.analysis.boundaries import score
from layerswap.sweep import validate_sweep_dict
from layerswap.sweep.lens_table import lens_figure, lens_section, lens_table, measured_outcome, read_lens_section

N = 12
TAU = 0.25 / N
SWAPS = [(1, 1, 0), (2, 1, 0), (3, 1, 0), (2, 2, 0), (1, 3, 1), (4, 2, 0)]


def _lens(folder: Path, kind: str, diff: np.ndarray, proposes: list[tuple[int, int, int]]) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame({"layer": range(N), "diff": diff}).to_csv(folder / "contrast.csv", index=False)
    cands = [{"bottom": b, "top": u, "transition": t, "score": score(diff, b, u, t, TAU)} for b, u, t in proposes]
    data = {"kind": kind, "separation": "clear", "rule": {"penalty_per_layer": TAU}, "candidates": cands}
    (folder / "boundaries.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _planted(tmp_path: Path, swaps=SWAPS) -> tuple[dict, pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]:
    """Two lenses and a skipped one in a --lens folder; swaps on the proxy with a planted paired outcome."""
    rng = np.random.default_rng(3)
    d1, d2 = rng.normal(size=N) / N, rng.normal(size=N) / N
    _lens(tmp_path / "lens" / "deltas", "deltas", d1, [(2, 1, 0), (2, 2, 0)])
    _lens(tmp_path / "lens" / "cka", "cka", d2, [(2, 2, 0), (1, 3, 1)])
    (tmp_path / "lens" / "lape").mkdir()
    pd.DataFrame([{"lens": n, "separation": s, "reason": w} for n, s, w in [
        ("deltas", "clear", ""), ("cka", "clear", ""), ("lape", "skipped", "LAPE needs FLORES text in at least 3 languages")]
    ]).to_csv(tmp_path / "lens" / "lenses.csv", index=False)
    names = [f"swap-b{b}-u{u}" + (f"-t{t}" if t else "") for b, u, t in swaps]
    outcome = rng.normal(size=len(swaps))
    results = pd.DataFrame(
        [{"candidate": n, "method": "layer_swap", "task": "proxy", "language": "sw", "metric": "gold_logprob", "value": -3 + o,
          "bottom": b, "top": u, "transition": t} for n, (b, u, t), o in zip(names, swaps, outcome, strict=True)]
        + [{"candidate": "base", "method": "identity", "task": "proxy", "language": "sw", "metric": "gold_logprob", "value": -3.0}]
    )
    comparisons = pd.DataFrame(
        [{"task": "proxy", "metric": "gold_logprob", "language": "all", "reference": "base", "role": "leader", "candidate": n,
          "method": "layer_swap", "diff": o, "verdict": "better" if o > 1 else "indistinguishable"} for n, o in zip(names, outcome, strict=True)]
    )
    config = validate_sweep_dict({"base": "b", "math": "m", "lang": "l", "tasks": ["proxy"],
                                  "candidates": {"boundaries": str(tmp_path / "lens"), "top_n": 2, "baselines": ["base"]}})
    return config, results, comparisons, np.array([[score(d, *g, TAU) for g in swaps] for d in (d1, d2)]), outcome


def test_spearman_equals_scipy_on_a_planted_table(tmp_path):
    config, results, comparisons, scores, outcome = _planted(tmp_path)
    table = lens_table(results, comparisons, config)
    for lens, planted in (("deltas", scores[0]), ("cka", scores[1])):
        mine = table[table["lens"] == lens].set_index("candidate")
        assert len(mine) == len(SWAPS)
        assert mine["score"].to_numpy() == pytest.approx(planted)  # every evaluated geometry, not only its proposals
        assert mine["outcome"].to_numpy() == pytest.approx(outcome)
        assert mine["rho"].iloc[0] == pytest.approx(st.spearmanr(planted, outcome).statistic)
        assert mine["ci_low"].iloc[0] <= mine["rho"].iloc[0] <= mine["ci_high"].iloc[0]
    assert set(table.loc[(table["lens"] == "cka") & table["proposed"].astype(bool), "candidate"]) == {"swap-b2-u2", "swap-b1-u3-t1"}
    skipped = table[table["lens"] == "lape"]
    assert len(skipped) == 1 and "at least 3 languages" in skipped["why"].iloc[0] and math.isnan(skipped["rho"].iloc[0])


def test_a_lens_with_fewer_than_three_geometries_says_why(tmp_path):
    config, results, comparisons, _, _ = _planted(tmp_path, swaps=SWAPS[:2])
    table = lens_table(results, comparisons, config)
    deltas = table[table["lens"] == "deltas"]
    assert deltas["rho"].isna().all() and (deltas["n"] == 2).all()
    assert "only 2 evaluated swap geometries have a score and an outcome" in deltas["why"].iloc[0]


def test_the_screen_decides_where_the_target_cannot(tmp_path):
    config, results, comparisons, _, _ = _planted(tmp_path)
    config = config.model_copy(update={"tasks": ["proxy", "mgsm"], "target": "mgsm", "screen": "proxy"})
    two = comparisons.head(2).assign(task="mgsm", metric="exact_match", verdict="indistinguishable")
    outcome = measured_outcome(results, pd.concat([comparisons, two]), config)
    assert outcome.task == "proxy" and "not the target mgsm: only 2 swap(s) were evaluated on it" in outcome.basis


def test_the_section_is_written_and_read_back(tmp_path):
    config, results, comparisons, _, _ = _planted(tmp_path)
    out = tmp_path / "sweep"
    lines = lens_section(results, comparisons, config, out, root=out)
    assert (out / "lens_table.csv").is_file() and (out / "figures" / "lens_table.png").is_file()
    text = "\n".join(lines)
    assert "## Which lens predicted this run" in text and "| lape | skipped | 0 |" in text
    assert "![which lens predicted this run](figures/lens_table.png)" in text
    assert read_lens_section(out, root=out) == lines  # the demo reads what the sweep wrote
    assert lens_figure(pd.read_csv(out / "lens_table.csv")) is not None


def test_the_sweep_report_has_the_lens_table(tmp_path):
    """A sweep over two lenses' proposals: its report.md carries the table, every swap named by its lenses."""
    from layerswap.sweep import ResultStore, build_candidates, run_candidates, settings_key
    from layerswap.sweep.report import write_report

    config, _, _, _, _ = _planted(tmp_path)
    cands = build_candidates(config, num_layers=N)

    def evaluate(cand):
        offset = 0.0 if cand.method != "layer_swap" else 0.1 * cand.bottom - 0.05 * cand.top
        values = offset + np.random.default_rng(0).normal(size=24) + np.random.default_rng(len(cand.name)).normal(scale=0.2, size=24)
        scores = pd.DataFrame({"task": "proxy", "lang": "sw", "id": [f"m-{i}" for i in range(24)], "score": values})
        return pd.DataFrame([{"task": "proxy", "language": "sw", "metric": "gold_logprob", "value": values.mean()}]), scores

    store = ResultStore(tmp_path / "sweep", settings_key(config))
    results = run_candidates(cands, store, lambda c: 0.0, evaluate)
    write_report(results, config, len(cands), tmp_path / "sweep", {c.name: store.load_scores(c) for c in cands})
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "## Which lens predicted this run" in report and "| `swap-b2-u2` |" in report and "| deltas, cka |" in report
    table = pd.read_csv(tmp_path / "sweep" / "lens_table.csv")
    assert set(table["lens"]) == {"deltas", "cka", "lape"}
    assert (table.loc[table["lens"] == "deltas", "n"] == 3).all()  # three swaps evaluated: (2,1,0), (2,2,0), (1,3,1)
