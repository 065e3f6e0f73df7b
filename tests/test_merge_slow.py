"""Merges on the real Gemma 3 270M (tied embeddings, 18 layers): on disk and in place.

How fast they run is measured by the benchmarks (benchmarks/bench_merge.py), not asserted here: a
wall-clock bound fails on a busy machine for no fault of the code. The in-place check asserts what
makes it fast instead: only the tensors whose source changed are copied.
"""

from __future__ import annotations

import pytest
import torch

from layerswap.io import ModelFolder
from layerswap.merge import TensorCache, apply_merge, merge, swap_config
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
