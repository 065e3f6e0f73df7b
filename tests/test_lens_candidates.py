"""The sweep takes swaps from every lens an analysis ran, one candidate per geometry, naming the lenses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from layerswap.errors import ConfigError, InputPathError
from layerswap.sweep import build_candidates, validate_sweep_dict
from layerswap.sweep.candidates import lens_sources


def _boundaries(folder: Path, kind: str, geometries: list[tuple[int, int, int]], scores: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cands = [{"bottom": b, "top": u, "transition": t, "score": s} for (b, u, t), s in zip(geometries, scores, strict=True)]
    b, u, t = geometries[0]
    data = {"kind": kind, "bottom": b, "top": u, "transition": t, "rule": {"penalty_per_layer": 0.02}, "candidates": cands}
    (folder / "boundaries.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "boundaries.yaml"


def _lens_folder(root: Path) -> Path:
    """A ``--lens`` folder: deltas and importance share the swap (2, 2, 0); lape was skipped."""
    _boundaries(root / "deltas", "deltas", [(3, 1, 0), (2, 2, 0), (4, 1, 0)], [0.3, 0.2, 0.1])
    _boundaries(root / "importance", "importance", [(2, 2, 0), (1, 3, 1), (5, 2, 0)], [0.9, 0.8, 0.7])
    (root / "lape").mkdir()
    pd.DataFrame(
        [
            {"lens": "deltas", "separation": "none", "reason": "x"},
            {"lens": "importance", "separation": "clear", "reason": "y"},
            {"lens": "lape", "separation": "skipped", "reason": "only 1 FLORES language"},
        ]
    ).to_csv(root / "lenses.csv", index=False)
    return root


def _config(boundaries, top_n=2):
    return validate_sweep_dict(
        {"base": "b", "math": "m", "lang": "l", "tasks": ["proxy"], "candidates": {"boundaries": boundaries, "top_n": top_n, "baselines": ["base"]}}
    )


def test_two_lenses_share_a_geometry_once_naming_both(tmp_path):
    folder = _lens_folder(tmp_path / "lens")
    cands = build_candidates(_config(str(folder)), num_layers=18)
    swaps = [c for c in cands if c.method == "layer_swap"]
    assert [c.name for c in swaps] == ["swap-b3-u1", "swap-b2-u2", "swap-b1-u3-t1"]
    by_name = {c.name: c for c in swaps}
    assert by_name["swap-b2-u2"].lenses == ["deltas", "importance"]
    assert by_name["swap-b3-u1"].lenses == ["deltas"] and by_name["swap-b1-u3-t1"].lenses == ["importance"]
    # Every score is on the first lens's scale (deltas): importance's own swap that deltas does not rank has none.
    assert by_name["swap-b2-u2"].analysis_score == 0.2 and by_name["swap-b1-u3-t1"].analysis_score is None
    sources = lens_sources([str(folder)])
    assert [(s.name, s.why) for s in sources] == [("deltas", None), ("importance", None), ("lape", "only 1 FLORES language")]


def test_boundaries_files_as_a_list_and_one_path(tmp_path):
    a = _boundaries(tmp_path / "analysis", "deltas", [(3, 1, 0), (2, 2, 0)], [0.3, 0.2])
    b = _boundaries(tmp_path / "importance", "importance", [(2, 2, 0), (5, 2, 0)], [0.9, 0.7])
    listed = build_candidates(_config([str(a), str(b.parent)]), num_layers=18)
    assert {c.name: c.lenses for c in listed if c.lenses} == {
        "swap-b3-u1": ["deltas"],
        "swap-b2-u2": ["deltas", "importance"],
        "swap-b5-u2": ["importance"],
    }
    one = build_candidates(_config(str(a)), num_layers=18)  # the form of earlier configs
    assert [c.name for c in one if c.lenses] == ["swap-b3-u1", "swap-b2-u2"]
    # The same lens twice is told apart by its folder.
    c = _boundaries(tmp_path / "run2", "deltas", [(4, 2, 0)], [0.5])
    assert [s.name for s in lens_sources([str(a), str(c)])] == ["deltas", "deltas@run2"]


def test_a_folder_without_boundaries_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputPathError, match="is a folder without boundaries.yaml: pass a"):
        build_candidates(_config(str(tmp_path / "empty")), num_layers=18)


def test_the_demo_sweeps_every_source_by_default():
    from layerswap.pipeline.config import DemoConfig, sweep_config

    config = DemoConfig.quick_config()
    assert config.candidate_source == ["analysis", "importance"]
    assert DemoConfig.quick_config(candidate_source="importance").candidate_source == ["importance"]
    sweep = sweep_config(config, base="b", math="m", lang="l", boundaries=["a/boundaries.yaml", "i/boundaries.yaml"], data_dir=None)
    assert sweep.candidates.boundaries == ["a/boundaries.yaml", "i/boundaries.yaml"]


def test_the_demo_runs_the_lenses_it_names_and_sweeps_their_recommendations(tiny_experts, data_dir, tmp_path):
    from layerswap.pipeline.config import DemoConfig
    from layerswap.pipeline.plan import estimate_stages
    from layerswap.pipeline.run import demo_lenses

    config = DemoConfig.quick_config(candidate_source=["analysis", "cka", "grad"], lens_examples=4, seq_len=16)
    assert config.lenses() == ["cka", "grad"]
    assert config.boundary_sources(tmp_path) == [str(tmp_path / "analysis" / "boundaries.yaml"), str(tmp_path / "lenses")]
    assert "lenses" in [row.stage for row in estimate_stages(config, 1e9)]
    assert DemoConfig.quick_config().lenses() == [] and "lenses" not in [r.stage for r in estimate_stages(DemoConfig.quick_config(), 1e9)]
    experts = {"math": tiny_experts["math"], "lang": tiny_experts["lang"]}
    run = demo_lenses(config, str(tiny_experts["base"]), experts, tmp_path / "lenses", data_dir=str(data_dir), device="cpu")
    assert list(run.results) == ["cka", "grad"]
    assert [s.name for s in lens_sources(config.boundary_sources(tmp_path)[1:])] == ["cka", "grad"]
    with pytest.raises(ConfigError, match="analysis, importance, cka, logit, lape, grad at most once"):
        DemoConfig.quick_config(candidate_source=["analysis", "bogus"])
