"""TensorCache's stores: tensors read from the files on demand ("mapped") give the same merges, bit for bit,
as tensors held in memory after one read ("memory", the float32 cache the sweep used), in bf16 and float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerswap.errors import ConfigError
from layerswap.merge import TensorCache, apply_merge, merged_state_dict
from layerswap.merge.config import merge_config
from layerswap.testing import make_tiny_model, planted_expert


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def triple(request, tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"store-{request.param}".replace("torch.", ""))
    base = make_tiny_model(root / "base", "llama", layers=6, dtype=request.param, tokenizer=tiny_tokenizer)
    math = planted_expert(base, root / "math", layers=[2, 3], scale=0.05, noise=0.002, seed=4)
    lang = planted_expert(base, root / "lang", layers=[0, 5], scale=0.05, noise=0.002, seed=5)
    return {"base": base, "math": math, "lang": lang}


def _configs(t: dict[str, Path]) -> list[dict]:
    experts = {"math": str(t["math"]), "lang": str(t["lang"])}
    return [
        {"method": "layer_swap", "experts": experts, "params": {"bottom": 1, "top": 1, "transition": 1}},
        {"method": "linear", "experts": experts, "params": {"weights": {"math": 0.3, "lang": 0.7}}},
        {"method": "ties", "base": str(t["base"]), "experts": experts, "params": {"density": 0.5}},
        {"method": "task_arithmetic", "base": str(t["base"]), "experts": experts, "params": {"weights": {"math": 0.5, "lang": 0.5}}},
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32-cache", "model-dtype-cache"])
def test_mapped_store_merges_like_the_memory_store(triple, dtype):
    for data in _configs(triple):
        cfg = merge_config(data)
        held = TensorCache.from_config(cfg, dtype=dtype, store="memory").preload()
        mapped = TensorCache.from_config(cfg, dtype=dtype).preload()
        assert mapped.store == "mapped" and mapped.nbytes == 0 < held.nbytes
        a, b = merged_state_dict(held, cfg), merged_state_dict(mapped, cfg)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), (data["method"], name)


def test_mapped_store_into_a_loaded_model(triple):
    """A sequence of candidates merged into one loaded model: same parameters either way, only changed tensors move."""
    from transformers import AutoModelForCausalLM

    models, stats = {}, {}
    for store in ("memory", "mapped"):
        cache = TensorCache({"math": triple["math"], "lang": triple["lang"]}, triple["base"], store=store).preload()
        model = AutoModelForCausalLM.from_pretrained(triple["base"])
        stats[store] = [apply_merge(model, cache, merge_config(data)).copied for data in _configs(triple)[:2]]
        models[store] = model.state_dict()
    assert stats["memory"] == stats["mapped"]
    for name, value in models["memory"].items():
        assert torch.equal(value, models["mapped"][name]), name


def test_memory_store_that_does_not_fit_is_refused_before_loading(triple):
    cache = TensorCache({"math": triple["math"], "lang": triple["lang"]}, triple["base"], store="memory")
    with pytest.raises(ConfigError, match="use store 'mapped'") as err:
        cache.check_fits(available=cache.held_bytes() - 1)
    assert "\n" not in str(err.value) and cache.nbytes == 0
    TensorCache({"math": triple["math"]}, triple["base"]).check_fits(available=0)  # mapped holds nothing: no refusal
    with pytest.raises(ConfigError, match="unknown tensor store"):
        TensorCache({"math": triple["math"]}, triple["base"], store="disk")


def test_a_model_that_does_not_fit_is_refused_with_the_dtype_that_would(triple):
    cache = TensorCache({"math": triple["math"], "lang": triple["lang"]}, triple["base"])
    params, largest = cache.reference.num_parameters, cache.largest_float32()
    cache.check_model_fits(torch.float32, available=4 * params + 2 * largest)  # just fits
    with pytest.raises(ConfigError, match=r"in float32 needs .* load it as bfloat16") as err:
        cache.check_model_fits(torch.float32, available=4 * params + 2 * largest - 1)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no dtype fits here"):
        cache.check_model_fits(torch.bfloat16, available=2 * params)


@pytest.fixture(scope="module")
def tied_triple(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Float32 weights on a 1/64 grid and experts one or two grid steps away everywhere: every |delta| ties."""
    from layerswap.io import ModelFolder
    from layerswap.io.writer import write_tensors

    root = tmp_path_factory.mktemp("tied")
    made = make_tiny_model(root / "made", "llama", layers=4, dtype=torch.float32, tokenizer=tiny_tokenizer)
    src = ModelFolder(made)
    gen = torch.Generator().manual_seed(8)

    def grid(steps: dict[str, int] | None = None):
        for name in src.names():
            w = torch.round(src.get(name) * 64) / 64
            if steps is not None:
                sign = torch.where(torch.rand(w.shape, generator=gen) < 0.5, -1.0, 1.0)
                w = w + sign * steps["size"] * (torch.rand(w.shape, generator=gen) < steps["share"]).float() / 64 + sign / 64
            yield name, w

    base = write_tensors(root / "base", grid(), donor=made)
    math = write_tensors(root / "math", grid({"size": 0, "share": 0.0}), donor=made)
    lang = write_tensors(root / "lang", grid({"size": 1, "share": 0.3}), donor=made)
    return {"base": base, "math": math, "lang": lang}


def _streaming_configs(t: dict[str, Path]) -> list[dict]:
    experts = {"math": str(t["math"]), "lang": str(t["lang"])}
    base = str(t["base"])
    return [
        {"method": "ties", "base": base, "experts": experts, "params": {"density": 0.3, "weights": {"math": 0.7, "lang": 0.4}}},
        {"method": "ties", "base": base, "experts": experts, "params": {"density": {"math": 1.0, "lang": 0.1}, "normalize": False}},
        {"method": "task_arithmetic", "base": base, "experts": experts, "params": {"weights": {"math": 0.5, "lang": 0.5}, "lambda": 0.8}},
        {"method": "ties", "base": base, "experts": experts, "params": {"density": 0.5, "lines": {"alpha": 0.2, "beta": 1.0}}},
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32-cache", "model-dtype-cache"])
def test_streamed_merge_equals_the_in_memory_one(triple, dtype, monkeypatch):
    """Above the topk size, TIES and task arithmetic read chunks from the files (no float32 task vectors):
    the same bits as the in-memory histogram path, into a model or to disk."""
    _check_streamed(triple, dtype, monkeypatch)


def test_streamed_ties_keep_the_same_tied_entries(tied_triple, monkeypatch):
    """Every |delta| equal: which tied entries the cut keeps (the first in memory order) is the same streamed."""
    _check_streamed(tied_triple, torch.float32, monkeypatch)


def _check_streamed(t: dict[str, Path], dtype: torch.dtype, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from layerswap.merge import streamed as streamed_module
    from layerswap.merge.engine import DiskSources, compute
    from layerswap.merge.methods import _math
    from layerswap.merge.streamed import combine_streamed

    monkeypatch.setattr(_math, "_TOPK_MAX", 4000)  # the embedding and head (12,288 entries) take the histogram cut
    monkeypatch.setattr(_math, "_CHUNK", 997)  # in 13 chunks, ties spread over them
    streamed = []
    monkeypatch.setattr(streamed_module, "combine_streamed", lambda *a: streamed.append(1) or combine_streamed(*a))
    for data in _streaming_configs(t):
        cfg = merge_config(data)
        held = merged_state_dict(TensorCache.from_config(cfg, dtype=dtype, store="memory").preload(), cfg, dtype=torch.float32)
        mapped = TensorCache.from_config(cfg, dtype=dtype)
        before = len(streamed)
        ours = merged_state_dict(mapped, cfg, dtype=torch.float32)
        assert len(streamed) > before, data  # the streamed path ran
        for name in held:
            assert torch.equal(held[name], ours[name]), (data, name)
        model = AutoModelForCausalLM.from_pretrained(t["base"], dtype=dtype)
        apply_merge(model, mapped, cfg)
        for name, value in model.state_dict().items():
            if name in held:
                assert torch.equal(value, held[name].to(value.dtype)), (data, name)
        if dtype == torch.float32:  # the on-disk merge's sources
            from layerswap.merge.plan import build_plan

            disk = DiskSources(mapped.base, mapped.experts)
            plan = build_plan(cfg, mapped.num_layers)
            for name in (n for n in held if held[n].numel() > 4000):
                assert torch.equal(compute(plan.op_for(name, mapped.architecture), name, disk), held[name]), (data, name)


def test_an_interrupted_write_is_redone(triple, monkeypatch):
    """A parameter whose streamed write of one candidate stopped half-way is not taken for the previous
    candidate's: going back to that candidate writes it again."""
    from transformers import AutoModelForCausalLM

    from layerswap.merge import memory

    first, second = merge_config(_streaming_configs(triple)[0]), merge_config(_streaming_configs(triple)[2])
    cache = TensorCache.from_config(first)
    model = AutoModelForCausalLM.from_pretrained(triple["base"])
    want = merged_state_dict(cache, first, dtype=torch.float32)
    name = max(want, key=lambda n: want[n].numel())
    apply_merge(model, cache, first)
    real = memory.compute_into

    def stops(op, tensor, src, target):
        if tensor == name:
            target.view(-1)[:3].fill_(7.0)  # half-written
            raise KeyboardInterrupt
        real(op, tensor, src, target)

    monkeypatch.setattr(memory, "compute_into", stops)
    with pytest.raises(KeyboardInterrupt):
        apply_merge(model, cache, second)
    monkeypatch.setattr(memory, "compute_into", real)
    apply_merge(model, cache, first)
    params = dict(model.named_parameters())
    assert torch.equal(params[name].detach().float(), want[name].to(params[name].dtype).float())
