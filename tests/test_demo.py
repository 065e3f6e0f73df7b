"""``layerswap demo --quick``: the whole pipeline on the real Gemma 3 270M and real data (slow)."""

from __future__ import annotations

import pandas as pd
import pytest

from layerswap.cli import main


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "demo"
    figures = tmp_path / "figures"
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quick", "--data-dir", str(data_dir), "--out", str(out), "--figures", str(figures)])
    assert exc.value.code == 0
    report = (out / "report.md").read_text()
    assert "not a replication" in report and "Winner" in report
    for stage in ("experts/math", "experts/lang", "analysis", "importance"):
        assert (out / stage / "layerswap.json").exists(), stage
    assert (out / "analysis" / "boundaries.yaml").exists()
    results = pd.read_csv(out / "sweep" / "results.csv")
    assert {"proxy", "flores"} <= set(results["task"]) and results["value"].notna().all()
    assert any(results["method"] == "layer_swap")
    published = {p.name for p in figures.iterdir()}
    assert "demo_deltas_shares.png" in published and "demo_best_vs_baselines_proxy.png" in published
