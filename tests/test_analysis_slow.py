"""The analysis on the real Gemma 3 270M: planted LoRA experts, and importance on real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerswap.analysis import analyze
from layerswap.analysis.importance import importance
from layerswap.testing import make_lora_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma(gemma3_270m) -> Path:
    return gemma3_270m


def test_planted_lora_experts_on_gemma(gemma, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    modules = ("q_proj", "v_proj", "down_proj")
    lang = make_lora_adapter(gemma, tmp_path / "lang", layers=[0, 1, 2, 16, 17], target_modules=modules, r=4, seed=1)
    math = make_lora_adapter(gemma, tmp_path / "math", layers=list(range(4, 14)), target_modules=modules, r=4, seed=2)
    result = analyze(gemma, {"math": math, "lang": lang}, out=tmp_path / "out")
    bd = result.boundaries
    assert (bd["bottom"], bd["top"], bd["separation"]) == (3, 2, "clear")
    assert result.num_layers == 18 and len(result.layers) == 36
    assert (tmp_path / "out" / "figures" / "shares.png").exists()
    # untouched tensors (the 262k-token embedding among them) have zero delta and were not read
    emb = result.deltas[(result.deltas["module"] == "embed_tokens")]
    assert (emb["l2"] == 0).all() and emb["base_l2"].isna().all()


def test_importance_on_gemma(gemma, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    result = importance(gemma, {"math": "gsm8k", "lang": "ntrex:sw"}, examples=2, batch_size=2, seq_len=32, data_dir=data_dir, out=tmp_path / "imp", plots=False)
    layers = result.layers
    assert len(layers) == 36 and layers.groupby("expert")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])
    assert (layers["l2"] > 0).all()
    assert result.boundaries["candidates"] and (tmp_path / "imp" / "boundaries.yaml").exists()
