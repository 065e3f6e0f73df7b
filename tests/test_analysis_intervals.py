"""Intervals for the analysis' lenses (layerswap.analysis.intervals): chance, planted separations, agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom

from layerswap.analysis import analyze
from layerswap.analysis.intervals import (
    cells_from_deltas,
    contrast_agreement,
    cosine_over_cells,
    overlap_vs_chance,
    read_table,
    share_agreement,
    split_gain,
)
from layerswap.errors import DataError
from layerswap.testing import make_tiny_model, planted_expert


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_tokenizer):
    """12 tiny Llama layers; language delta planted in 0-2 and 10-11, math in 4-8; the analysis written to a folder."""
    root = tmp_path_factory.mktemp("planted-intervals")
    base = make_tiny_model(root / "base", "llama", layers=12, tokenizer=tiny_tokenizer)
    lang = planted_expert(base, root / "lang", layers=[0, 1, 2, 10, 11], scale=0.05, noise=0.002, seed=11)
    math_ = planted_expert(base, root / "math", layers=[4, 5, 6, 7, 8], scale=0.05, noise=0.002, seed=12)
    analyze(base, {"math": math_, "lang": lang}, out=root / "analysis", plots=False)
    return root / "analysis"


def test_a_planted_separation_has_an_interval_above_zero(planted):
    cells = cells_from_deltas(read_table(planted, "deltas"))
    assert set(cells.columns) == {"expert", "layer", "module", "sumsq"} and cells["layer"].max() == 11
    g = split_gain(cells, "lang", "math", 3, 2, num_layers=12)
    assert g["gain"] > 0.5 and g["module_low"] > 0 and g["modules_positive"] == g["modules"] > 3
    wrong = split_gain(cells, "math", "lang", 3, 2, num_layers=12)  # roles swapped: the same split is against it
    assert wrong["module_high"] < 0
    with pytest.raises(DataError, match="no layer"):
        split_gain(cells, "lang", "math", 0, 0, num_layers=12)


def test_an_analysis_agrees_with_itself_and_disjoint_experts_do_not(planted):
    cells = cells_from_deltas(read_table(planted, "deltas"))
    same = share_agreement(cells, cells, "lang")
    assert same["cell_rho"] == pytest.approx(1.0) and same["layer_rho"] == pytest.approx(1.0) and same["layers"] == 12
    crossed = share_agreement(cells, cells, "lang", b_expert="math")  # planted in other layers: negative
    assert crossed["layer_high"] < 0
    c = contrast_agreement(read_table(planted, "contrast"), read_table(planted, "contrast"))
    assert c["rho"] == pytest.approx(1.0) and c["layers"] == 12


def test_module_sizes_do_not_make_agreement():
    """Two analyses whose layer profiles are unrelated agree on nothing, though big modules hold more in both."""
    rng = np.random.default_rng(0)
    size = {"q_proj": 1.0, "up_proj": 50.0, "norm": 0.01}
    rows_a, rows_b = [], []
    for module, s in size.items():
        for layer in range(18):
            rows_a.append({"expert": "x", "layer": layer, "module": module, "sumsq": s * rng.uniform(0.5, 1.5)})
            rows_b.append({"expert": "x", "layer": layer, "module": module, "sumsq": s * rng.uniform(0.5, 1.5)})
    a, b = pd.DataFrame(rows_a), pd.DataFrame(rows_b)
    raw = pd.Series(a["sumsq"]).corr(pd.Series(b["sumsq"]), method="spearman")
    assert raw > 0.8  # what a correlation of raw shares would claim
    got = share_agreement(a, b, "x")
    assert got["cell_low"] < 0 < got["cell_high"] and got["cells"] == 54


def test_overlap_against_chance_is_hypergeometric():
    row = {"expert_a": "math", "expert_b": "lang", "k_percent": 1.0, "layer": np.nan, "module": "all", "numel": 10_000, "n_a": 100, "n_b": 100}
    exp_j = 1.0 / (200 - 1.0)  # chance's mean overlap is 100 * 100 / 10000 = 1 shared entry
    table = pd.DataFrame([{**row, "n_both": 1, "expected_jaccard": exp_j}, {**row, "k_percent": 5.0, "n_both": 12, "expected_jaccard": exp_j}])
    table = pd.concat([table, table.assign(layer=0, module="q_proj")])  # per-cell rows are ignored
    out = overlap_vs_chance(table)
    assert len(out) == 2
    chance, planted = out.iloc[0], out.iloc[1]
    assert chance["expected"] == pytest.approx(1.0) and chance["chance_low"] <= 1.0 <= chance["chance_high"]
    assert chance["p_value"] == pytest.approx(1.0)
    null = hypergeom(10_000, 100, 100)
    assert planted["p_value"] == pytest.approx(2 * null.sf(11)) and planted["p_value"] < 1e-6
    assert planted["jaccard_ratio"] > planted["chance_high"] or np.isnan(planted["jaccard_ratio"])


def test_cosine_interval_over_cells():
    cells = [{"expert_a": "math", "expert_b": "lang", "layer": float(layer), "module": m, "cosine": 0.3 + 0.01 * layer} for layer in range(6) for m in ("q", "k")]
    table = pd.DataFrame(cells + [{"expert_a": "math", "expert_b": "lang", "layer": np.nan, "module": "all", "cosine": 0.31}])
    got = cosine_over_cells(table).iloc[0]
    assert got["cosine"] == pytest.approx(0.31) and got["cells"] == 12 and got["cell_low"] > 0.25
    noise = pd.DataFrame([{**c, "cosine": v} for c, v in zip(cells, np.random.default_rng(1).normal(0, 0.01, 12), strict=True)])
    got = cosine_over_cells(noise).iloc[0]
    assert got["cell_low"] < 0 < got["cell_high"]


def test_a_folder_without_the_table_is_one_line(tmp_path):
    with pytest.raises(DataError, match="not a finished analysis folder"):
        read_table(tmp_path, "deltas")


def test_the_summary_states_chance_and_the_cell_interval(planted):
    summary = (planted / "summary.md").read_text()
    assert "independent sets give" in summary and "hypergeometric p =" in summary
    assert "(layer, module) cells" in summary and "bootstrap over cells" in summary
