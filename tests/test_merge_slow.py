"""Merges on the real Gemma 3 270M (tied embeddings, 18 layers): on disk and in place, and two of
mergekit's methods through the YAML ``--emit-mergekit`` writes (the full set on the demo's fine-tuned
experts is ``benchmarks/bench_merge_real.py``, its table in RESULTS.md).

How fast they run is measured by the benchmarks (benchmarks/bench_merge.py), not asserted here: a
wall-clock bound fails on a busy machine for no fault of the code. The in-place check asserts what
makes it fast instead: only the tensors whose source changed are copied.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import require_module

from layerswap.io import ModelFolder
from layerswap.merge import TensorCache, apply_merge, merge, merge_config, swap_config
from layerswap.testing import planted_expert

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_pair(tmp_path_factory, gemma3_270m):
    base = gemma3_270m
    root = tmp_path_factory.mktemp("gemma")
    math = base  # one planted expert keeps the setup short; the swap is still checked byte for byte
    lang = planted_expert(base, root / "lang", layers=[0, 1, 2, 3, 16, 17], scale=0.01, seed=2)
    return base, math, lang


def test_gemma_swap_on_disk_and_in_place(gemma_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    base, math, lang = gemma_pair
    cfg = swap_config(math=str(math), lang=str(lang), bottom=4, top=2)
    res = merge(cfg, tmp_path / "out")
    assert res.computed == 0
    out = ModelFolder(res.out)
    name = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(out.get(name), ModelFolder(lang).get(name))
    model = AutoModelForCausalLM.from_pretrained(res.out, dtype=torch.float32)
    ids = torch.tensor([[2, 651, 6037, 603]])
    assert torch.isfinite(model(ids).logits).all()
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == 8

    # In place: the next candidate copies only the layers whose source changed (bottom 3 -> 4: layer 3).
    cache = TensorCache({"math": math, "lang": lang}).preload()
    apply_merge(model, cache, swap_config(math=str(math), lang=str(lang), bottom=3, top=2))
    stats = apply_merge(model, cache, cfg)
    assert stats.copied == len([n for n in cache.names() if ".layers.3." in n])
    assert stats.skipped == len(cache.names()) - stats.copied
    assert torch.equal(model.state_dict()[name], out.get(name))


@pytest.fixture(scope="module")
def gemma_dense_pair(tmp_path_factory, gemma3_270m):
    """Two experts with a delta on every tensor, as a full fine-tune has (larger in a few layers)."""
    root = tmp_path_factory.mktemp("gemma-dense")
    math = planted_expert(gemma3_270m, root / "math", layers=[5, 6, 7], scale=0.01, noise=0.002, seed=3)
    lang = planted_expert(gemma3_270m, root / "lang", layers=[0, 1, 16, 17], scale=0.01, noise=0.002, seed=4)
    return gemma3_270m, math, lang


@pytest.mark.parametrize(
    "method,params",
    [("model_stock", {}), ("nuslerp", {"weights": {"math": 0.5, "lang": 0.5}})],  # the sparsifying ones sort 1.7e8 entries: minutes
)
def test_gemma_methods_match_mergekit_within_bf16_rounding(gemma_dense_pair, tmp_path, method, params):
    """Every tensor of the real model (the 262144 x 640 embedding included) within bf16's rounding step."""
    require_module("mergekit.merge", "mergekit is not installed (dev extra): the parity tests run its merges")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    base, math, lang = gemma_dense_pair
    cfg = merge_config({"method": method, "base": str(base), "experts": {"math": str(math), "lang": str(lang)}, "params": params})
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    text = (tmp_path / "mk.yaml").read_text()
    assert "# note" not in text and yaml.safe_load(text)["merge_method"] == method
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "theirs"),
              MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True))
    ours, theirs = ModelFolder(res.out), ModelFolder(tmp_path / "theirs")
    assert set(ours.names()) == set(theirs.names())
    for name in ours.names():
        a, b = ours.get(name, torch.float32), theirs.get(name, torch.float32)
        assert ((a - b).abs() <= b.abs() * 2.0**-8 + 1e-6).all(), (name, (a - b).abs().max().item())
    name = "model.layers.6.mlp.down_proj.weight"  # the merge moved the weights: not a copy of either input
    assert not torch.equal(ours.get(name), ModelFolder(base).get(name))


def test_della_real_draws_on_gemma_weights_keep_the_same_share_and_rescale_like_mergekit(gemma3_270m):
    """DELLA's own random draws on a real weight matrix's heavy-tailed magnitudes (not a Gaussian):
    both tools keep ``density`` of the entries, more of the large ones, and rescale the kept alike."""
    require_module("mergekit.sparsify", "mergekit is not installed (dev extra)")
    from merge_checks import assert_della_draws_like_mergekit

    delta = ModelFolder(gemma3_270m).get("model.layers.9.mlp.down_proj.weight", torch.float32)  # 640 x 2048
    assert_della_draws_like_mergekit(delta, 0.4, 0.2, global_seed=7)
