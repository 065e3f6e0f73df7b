"""Merge wing: plans, formulas, on-disk and in-memory merges, LoRA, bad input, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from layerswap.errors import ConfigError, IncompatibleModelsError, LayerswapError, OutputExistsError
from layerswap.io import ModelFolder
from layerswap.merge import (
    TensorCache,
    apply_merge,
    build_plan,
    merge,
    merge_config,
    merged_state_dict,
    swap_config,
)
from layerswap.merge.methods import combine_deltas, dare_drop, stable_seed, trim_magnitude
from layerswap.merge.plan import Blend, Select
from layerswap.testing import make_lora_adapter, make_tiny_model, planted_expert

Q = "model.layers.{}.self_attn.q_proj.weight"


def _folders(*paths):
    return [ModelFolder(p) for p in paths]


# -------------------------------------------------------------------------- plans and formulas


def test_swap_layout_with_transitions():
    cfg = swap_config(math="m", lang="l", bottom=2, top=1, transition=2)
    plan = build_plan(cfg, 10)
    ops = plan.layer_ops
    assert ops[0] == ops[1] == Select("lang") and ops[9] == Select("lang")
    assert ops[2] == Blend((("math", 1 / 3), ("lang", 1 - 1 / 3)))
    assert ops[3] == Blend((("math", 2 / 3), ("lang", 1 - 2 / 3)))
    assert ops[4] == ops[5] == ops[6] == Select("math")
    assert ops[7] == Blend((("math", 2 / 3), ("lang", 1 - 2 / 3)))
    assert ops[8] == Blend((("math", 1 / 3), ("lang", 1 - 1 / 3)))
    assert plan.non_layer_op == Select("math")


def test_too_many_swapped_layers_is_an_error():
    cfg = swap_config(math="m", lang="l", bottom=3, top=2, transition=1)
    with pytest.raises(ConfigError, match=r"bottom=3 top=2 transition=1 uses 7 of the 6 layers and leaves no middle layer"):
        build_plan(cfg, 6)
    # the one geometry rule (merge, sweep, analysis): at least one layer stays the math expert's
    with pytest.raises(ConfigError, match=r"uses 6 of the 6 layers and leaves no middle layer"):
        build_plan(swap_config(math="m", lang="l", bottom=2, top=2, transition=1), 6)
    assert len(build_plan(swap_config(math="m", lang="l", bottom=2, top=1, transition=1), 6).layer_ops) == 6


def test_trim_magnitude_keeps_top_k():
    d = torch.tensor([0.1, -3.0, 2.0, -0.5, 0.05, 1.0])
    assert torch.equal(trim_magnitude(d, 0.5), torch.tensor([0.0, -3.0, 2.0, 0.0, 0.0, 1.0]))
    assert torch.equal(trim_magnitude(d, 0.01), torch.tensor([0.0, -3.0, 0, 0, 0, 0]))  # at least one kept


@pytest.mark.parametrize("profile", ["gaussian", "dense-uniform", "sparse", "nan"])
def test_trim_magnitude_keeps_what_topk_keeps_in_chunks_of_any_size(monkeypatch, profile):
    """Above ``_TOPK_MAX`` entries the histogram cut keeps exactly the k largest magnitudes (topk's multiset of values), whatever
    the ties (Adam's first steps leave deltas of one magnitude: nearly every entry ties at the cut),
    chunk boundaries included; of the entries tied at the cut the first in memory order are kept."""
    import layerswap.merge.methods._math as math_mod

    g = torch.Generator().manual_seed(3)
    n = 5003
    if profile == "gaussian":
        d = torch.randn(n, generator=g)
    elif profile == "dense-uniform":  # +-lr everywhere, a few larger: massive ties at the cut
        d = torch.where(torch.rand(n, generator=g) < 0.5, -1e-5, 1e-5)
        d[:40] *= 3
    elif profile == "sparse":  # most entries unchanged (zero delta): the cut can fall on zero
        d = torch.where(torch.rand(n, generator=g) < 0.1, torch.randn(n, generator=g), torch.zeros(n))
    else:
        d = torch.randn(n, generator=g)
        d[7] = float("nan")
    monkeypatch.setattr(math_mod, "_CHUNK", 97)  # many chunks, ties spanning their boundaries
    monkeypatch.setattr(math_mod, "_TOPK_MAX", 1000)  # the histogram cut, not topk
    for density in (0.001, 0.05, 0.2, 0.5, 0.9):
        k = max(1, int(density * n))
        kept = trim_magnitude(d.clone(), density, inplace=True)
        chosen = (kept != 0) | kept.isnan()
        expected = torch.topk(d.abs().nan_to_num(nan=float("inf")), k).values
        if profile != "sparse":  # topk counts kept zeros; a zero kept is indistinguishable from one dropped
            assert int(chosen.sum()) == k
        got = torch.sort(kept.abs().nan_to_num(nan=float("inf"))[chosen], descending=True).values
        assert torch.equal(got, expected[: got.numel()]) and (expected[got.numel():] == 0).all()
        if profile == "dense-uniform" and k > 40:  # the tied entries kept are the first ones
            tied = torch.nonzero(chosen[40:]).view(-1)
            assert torch.equal(tied, torch.arange(tied.numel()))


def test_ties_consensus_in_chunks_gives_the_same_bits(monkeypatch):
    """The sign election and disjoint mean run chunk by chunk: any chunk size, the same result."""
    import layerswap.merge.methods._math as math_mod

    g = torch.Generator().manual_seed(5)
    deltas = [torch.randn(37, 11, generator=g) for _ in range(3)]
    kwargs = {"sparsify": "magnitude", "densities": [0.5, 0.3, 0.7], "consensus": True, "normalize": True, "lam": 0.8}
    whole = combine_deltas([d.clone() for d in deltas], [0.5, 0.2, 0.3], **kwargs)
    monkeypatch.setattr(math_mod, "_CHUNK", 13)
    chunked = combine_deltas([d.clone() for d in deltas], [0.5, 0.2, 0.3], **kwargs)
    assert torch.equal(whole, chunked) and whole.shape == (37, 11)


def test_ties_formula_by_hand():
    d1 = torch.tensor([1.0, -2.0, 3.0, 0.5])
    d2 = torch.tensor([-4.0, -1.0, 1.0, 0.2])
    w = [0.6, 0.4]
    # density 0.5 -> d1 keeps [-2, 3], d2 keeps [-4, -1]
    t1 = torch.tensor([0.0, -2.0, 3.0, 0.0]) * 0.6
    t2 = torch.tensor([-4.0, -1.0, 0.0, 0.0]) * 0.4
    # elected sign by total mass: [-1.6 -> -, -1.6 -> -, 1.8 -> +, 0 -> +]
    expected = torch.tensor([t2[0] / 0.4, (t1[1] + t2[1]) / 1.0, t1[2] / 0.6, 0.0])
    got = combine_deltas([d1, d2], w, sparsify="magnitude", densities=[0.5, 0.5], consensus=True, normalize=True)
    assert torch.allclose(got, expected)
    # lambda scales the merged vector
    got2 = combine_deltas([d1, d2], w, sparsify="magnitude", densities=[0.5, 0.5], consensus=True, normalize=True, lam=0.5)
    assert torch.allclose(got2, expected * 0.5)


def test_dare_formula_and_determinism():
    d = torch.randn(1000)
    g = torch.Generator().manual_seed(stable_seed(7, "w", "math"))
    out = dare_drop(d, 0.3, g)
    kept = out != 0
    assert torch.allclose(out[kept], d[kept] / 0.3)
    assert 0.2 < kept.float().mean() < 0.4
    g2 = torch.Generator().manual_seed(stable_seed(7, "w", "math"))
    assert torch.equal(out, dare_drop(d, 0.3, g2))
    assert stable_seed(7, "w", "math") != stable_seed(7, "w", "lang")
    l1 = dare_drop(d, 0.3, torch.Generator().manual_seed(1), "l1")
    assert torch.allclose(l1.abs().sum(), d.abs().sum())


@pytest.mark.parametrize("sparsify", [None, "magnitude", "random"])
def test_combine_leaves_inputs_alone_unless_consumed(sparsify):
    """Given tensors stay untouched; a generator of fresh reads (consume) gives the same result in place."""
    d1, d2 = torch.randn(64), torch.randn(64)
    keep1, keep2 = d1.clone(), d2.clone()
    kwargs = dict(sparsify=sparsify, densities=[0.5, 0.3], consensus=sparsify is not None, normalize=True)

    def gens():  # noqa: ANN202
        return [torch.Generator().manual_seed(i) for i in (1, 2)]

    expected = combine_deltas([d1, d2], [0.6, 0.4], generators=gens(), **kwargs)
    assert torch.equal(d1, keep1) and torch.equal(d2, keep2)
    fresh = (t.clone() for t in (d1, d2))
    assert torch.equal(combine_deltas(fresh, [0.6, 0.4], generators=gens(), consume=True, **kwargs), expected)
    d = torch.tensor([0.1, -3.0, 2.0, -0.5])
    assert trim_magnitude(d, 0.5, inplace=True) is d and torch.equal(d, torch.tensor([0.0, -3.0, 2.0, 0.0]))


def test_task_arithmetic_formula():
    d1, d2 = torch.randn(5), torch.randn(5)
    got = combine_deltas([d1, d2], [0.7, 0.3], lam=2.0)
    assert torch.allclose(got, 2.0 * (0.7 * d1 + 0.3 * d2))


# -------------------------------------------------------------------------- on-disk merges


def test_layer_swap_is_byte_identical(tiny_experts, tmp_path):
    cfg = swap_config(math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), bottom=2, top=1)
    res = merge(cfg, tmp_path / "out", emit_mergekit=tmp_path / "mk.yaml")
    assert res.computed == 0 and res.copied > 0
    out, m, lang = _folders(res.out, tiny_experts["math"], tiny_experts["lang"])
    for name in out.names():
        layer = out.architecture.classify(name).layer
        src = lang if layer is not None and (layer < 2 or layer >= 5) else m
        assert out.get(name).view(torch.uint8).equal(src.get(name).view(torch.uint8)), name
    prov = json.loads((res.out / "layerswap.json").read_text())
    assert prov["non_layer"] == "math" and prov["config"]["params"]["bottom"] == 2
    mk = yaml.safe_load((tmp_path / "mk.yaml").read_text())
    assert mk["merge_method"] == "passthrough"


def test_transition_layers_equal_the_blend(tiny_experts, tmp_path):
    cfg = swap_config(math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), bottom=1, top=1, transition=1,
                      base=str(tiny_experts["base"]), non_layer="average")
    res = merge(cfg, tmp_path / "out")
    out, m, lang = _folders(res.out, tiny_experts["math"], tiny_experts["lang"])
    for layer in (1, 4):
        name = Q.format(layer)
        assert torch.allclose(out.get(name), 0.5 * m.get(name) + 0.5 * lang.get(name), atol=1e-7)
    emb = "model.embed_tokens.weight"
    assert torch.allclose(out.get(emb), 0.5 * m.get(emb) + 0.5 * lang.get(emb), atol=1e-7)
    assert torch.equal(out.get(Q.format(2)), m.get(Q.format(2)))


def test_revert_composes_and_keeps_base(tiny_experts, tmp_path):
    cfg = merge_config({
        "method": "revert", "base": str(tiny_experts["base"]),
        "experts": {"lang": str(tiny_experts["lang"]), "math": str(tiny_experts["math"])},
        "params": {"keep": {"lang": "0-1,5", "math": "2-3"}},
    })
    res = merge(cfg, tmp_path / "out")
    assert res.computed == 0
    out, base, m, lang = _folders(res.out, tiny_experts["base"], tiny_experts["math"], tiny_experts["lang"])
    for name in out.names():
        layer = out.architecture.classify(name).layer
        src = {0: lang, 1: lang, 5: lang, 2: m, 3: m}.get(layer, base)
        assert torch.equal(out.get(name), src.get(name)), name


def test_ties_on_disk_matches_formula_and_loads(tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = merge_config({
        "method": "ties", "base": str(tiny_experts["base"]),
        "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])},
        "params": {"density": 0.3, "weights": {"math": 0.6, "lang": 0.4}},
    })
    res = merge(cfg, tmp_path / "out")
    out, base, m, lang = _folders(res.out, tiny_experts["base"], tiny_experts["math"], tiny_experts["lang"])
    name = Q.format(3)
    b = base.get(name)
    exp = b + combine_deltas([m.get(name) - b, lang.get(name) - b], [0.6, 0.4], sparsify="magnitude",
                             densities=[0.3, 0.3], consensus=True, normalize=True)
    assert torch.allclose(out.get(name), exp)
    model = AutoModelForCausalLM.from_pretrained(res.out)
    gen = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == 8
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "dare_linear", "dare_ties"])
def test_other_methods_load_without_nan(tiny_experts, tmp_path, method):
    from transformers import AutoModelForCausalLM

    cfg = merge_config({
        "method": method, "base": str(tiny_experts["base"]),
        "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])},
        "params": {"density": 0.5} if method.startswith("dare") else {},
        "dtype": "bf16",
    })
    res = merge(cfg, tmp_path / "out")
    assert ModelFolder(res.out).dtypes() == {"BF16": ModelFolder(res.out).num_parameters}
    assert json.loads((res.out / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(res.out)
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()
    if method == "dare_linear":  # deterministic per tensor: a second run is identical
        res2 = merge(cfg, tmp_path / "out2")
        assert torch.equal(ModelFolder(res.out).get(Q.format(2)), ModelFolder(res2.out).get(Q.format(2)))


# -------------------------------------------------------------------------- in memory


def test_apply_merge_in_place_copies_only_changes(tiny_experts, tmp_path):
    from transformers import AutoModelForCausalLM

    cache = TensorCache({"math": tiny_experts["math"], "lang": tiny_experts["lang"]}, tiny_experts["base"]).preload()
    model = AutoModelForCausalLM.from_pretrained(tiny_experts["base"])
    c1 = swap_config(math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), bottom=1, top=1)
    s1 = apply_merge(model, cache, c1)
    assert s1.skipped == 0
    c2 = swap_config(math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), bottom=2, top=1)
    s2 = apply_merge(model, cache, c2)
    per_layer = len([n for n in cache.names() if ".layers.1." in n])
    assert s2.copied == per_layer  # only layer 1 changed source
    disk = merge(c2, tmp_path / "disk")
    sd = model.state_dict()
    for name in ModelFolder(disk.out).names():
        assert torch.equal(sd[name], ModelFolder(disk.out).get(name)), name
    sd2 = merged_state_dict(cache, c2)
    assert torch.equal(sd2[Q.format(1)], ModelFolder(tiny_experts["lang"]).get(Q.format(1)))


def test_in_memory_ties_matches_disk(tiny_experts, tmp_path):
    cfg = merge_config({
        "method": "dare_ties", "base": str(tiny_experts["base"]),
        "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])},
        "params": {"density": 0.5, "seed": 3},
    })
    cache = TensorCache.from_config(cfg)
    sd = merged_state_dict(cache, cfg)
    disk = ModelFolder(merge(cfg, tmp_path / "out").out)
    for name in disk.names():
        assert torch.allclose(sd[name], disk.get(name)), name


# -------------------------------------------------------------------------- LoRA experts


@pytest.fixture(scope="module")
def lora_pair(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    math = make_lora_adapter(tiny_llama, root / "math", layers=range(6), seed=11)
    lang = make_lora_adapter(tiny_llama, root / "lang", layers=range(6), seed=12)
    other = make_lora_adapter(tiny_llama, root / "other", layers=range(6), target_modules=("k_proj",), seed=13)
    return {"base": tiny_llama, "math": math, "lang": lang, "other": other}


def test_lora_swap_gives_adapter(lora_pair, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = swap_config(math=str(lora_pair["math"]), lang=str(lora_pair["lang"]), bottom=2, top=1, base=str(lora_pair["base"]))
    res = merge(cfg, tmp_path / "out")
    assert res.output == "adapter" and (res.out / "adapter_config.json").exists()
    assert json.loads((res.out / "layerswap.json").read_text())["output"] == "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_pair["base"]), res.out).merge_and_unload()
    sd = model.state_dict()
    expect = merged_state_dict(TensorCache.from_config(cfg), cfg)
    for layer in (0, 3, 5):
        name = Q.format(layer)
        assert torch.allclose(sd[name], expect[name], atol=1e-6), name


def test_lora_transition_gives_full_model(lora_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = swap_config(math=str(lora_pair["math"]), lang=str(lora_pair["lang"]), bottom=1, top=1, transition=1,
                      base=str(lora_pair["base"]))
    res = merge(cfg, tmp_path / "out")
    assert res.output == "full" and "blends" in res.reason
    model = AutoModelForCausalLM.from_pretrained(res.out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_in_memory_ties_of_lora_experts_leaves_the_cache_intact(lora_pair, tmp_path):
    """The merge overwrites deltas in place; the cache's LoRA deltas must survive for the next candidate."""
    cfg = merge_config({
        "method": "ties", "base": str(lora_pair["base"]),
        "experts": {"math": str(lora_pair["math"]), "lang": str(lora_pair["lang"])},
        "params": {"density": 0.5},
    })
    cache = TensorCache.from_config(cfg).preload()
    first = merged_state_dict(cache, cfg)
    second = merged_state_dict(cache, cfg)
    on_disk = ModelFolder(merge(cfg, tmp_path / "ties").out)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
        assert torch.allclose(tensor.float(), on_disk.get(name, torch.float32)), name


def test_lora_different_targets_is_an_error(lora_pair, tmp_path):
    cfg = swap_config(math=str(lora_pair["math"]), lang=str(lora_pair["other"]), bottom=1, top=1, base=str(lora_pair["base"]))
    with pytest.raises(IncompatibleModelsError, match="different modules"):
        merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------- bad input


def test_bad_configs():
    with pytest.raises(ConfigError, match="valid methods: layer_swap, graded_swap, revert"):
        merge_config({"method": "karcher", "experts": {"a": "x"}})
    with pytest.raises(ConfigError, match="unknown parameter 'densty' for method ties; valid parameters: weights, density, lambda, normalize"):
        merge_config({"method": "ties", "base": "b", "experts": {"a": "x"}, "params": {"densty": 0.2}})
    with pytest.raises(ConfigError, match="sum to 0.9, not 1"):
        merge_config({"method": "linear", "experts": {"a": "x", "b": "y"}, "params": {"weights": {"a": 0.5, "b": 0.4}}})
    with pytest.raises(ConfigError, match="needs a base"):
        merge_config({"method": "ties", "experts": {"a": "x"}})
    with pytest.raises(ConfigError, match="non_layer 'foo'"):
        merge_config({"method": "layer_swap", "experts": {"math": "x", "lang": "y"}, "params": {"bottom": 1, "top": 1},
                      "non_layer": "foo"})


def test_different_layer_counts_named(tiny_experts, tiny_tokenizer, tmp_path):
    other = make_tiny_model(tmp_path / "deep", "llama", layers=7, tokenizer=tiny_tokenizer)
    cfg = swap_config(math=str(tiny_experts["math"]), lang=str(other), bottom=1, top=1)
    with pytest.raises(IncompatibleModelsError, match="has 7 layers"):
        merge(cfg, tmp_path / "out")
    wide = make_tiny_model(tmp_path / "wide", "llama", layers=6, hidden=48, tokenizer=tiny_tokenizer)
    with pytest.raises(IncompatibleModelsError, match=r"tensor '.*' has shape \[384, 48\] in expert lang"):
        merge(swap_config(math=str(tiny_experts["math"]), lang=str(wide), bottom=1, top=1), tmp_path / "out")


def test_existing_output_and_failed_write(tiny_experts, tmp_path, monkeypatch):
    cfg = swap_config(math=str(tiny_experts["math"]), lang=str(tiny_experts["lang"]), bottom=1, top=1)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge(cfg, tmp_path / "out")
    from layerswap.io import ShardedWriter

    calls = {"n": 0}
    real = ShardedWriter.copy_raw

    def flaky(self, name, info):
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(28, "No space left on device")
        return real(self, name, info)

    monkeypatch.setattr(ShardedWriter, "copy_raw", flaky)
    with pytest.raises(LayerswapError, match="nothing was written"):
        merge(cfg, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_merge_and_swap(tiny_experts, tmp_path):
    from typer.testing import CliRunner

    from layerswap.cli import app

    cfg = {"method": "task_arithmetic", "base": str(tiny_experts["base"]),
           "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])},
           "params": {"lambda": 0.5}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(app, ["merge", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "layerswap.json").read_text())["config"]["params"]["lambda"] == 0.5
    r = runner.invoke(app, ["swap", "--math", str(tiny_experts["math"]), "--lang", str(tiny_experts["lang"]),
                            "--bottom", "1", "--top", "1", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert Path(tmp_path / "s" / "model.safetensors").exists()


def test_cli_error_is_one_line(tiny_experts, tmp_path, capsys):
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["swap", "--math", str(tiny_experts["math"]), "--lang", str(tiny_experts["lang"]), "--bottom", "4",
              "--top", "3", "--out", str(tmp_path / "s")])
    assert exc.value.code == ConfigError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_planted_shards(tiny_llama, tmp_path):
    """Sharded inputs merge into sharded outputs byte-for-byte."""
    m = planted_expert(tiny_llama, tmp_path / "m", layers=[1], max_shard_size=20000, seed=5)
    lang = planted_expert(tiny_llama, tmp_path / "l", layers=[0], max_shard_size=20000, seed=6)
    cfg = merge_config({"method": "layer_swap", "experts": {"math": str(m), "lang": str(lang)},
                        "params": {"bottom": 1, "top": 0}, "max_shard_size": 30000})
    res = merge(cfg, tmp_path / "out")
    out = ModelFolder(res.out)
    assert (res.out / "model.safetensors.index.json").exists()
    assert torch.equal(out.get(Q.format(0)), ModelFolder(lang).get(Q.format(0)))


def test_swap_cli_never_imports_torch(tiny_experts, tmp_path):
    """A selection-only swap copies bytes: torch's ~2 s import would dominate a 2 GB swap."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from layerswap.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    out = tmp_path / "swapped"
    argv = ["swap", "--math", str(tiny_experts["math"]), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "no torch", proc.stderr[-2000:]
    merged = ModelFolder(out)
    for name in merged.names():
        layer = merged.architecture.classify(name).layer
        source = ModelFolder(tiny_experts["lang"] if layer in (0, 5) else tiny_experts["math"])
        assert torch.equal(merged.get(name), source.get(name))


# -------------------------------------------------------------------------- the method registry


def test_registry_lists_methods_and_baselines_in_order():
    from layerswap.merge.methods import BASELINE_NAMES, METHODS, get_method

    assert list(METHODS) == [
        "layer_swap", "graded_swap", "revert", "linear", "task_arithmetic", "lines", "ties", "dare_linear", "dare_ties",
        "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "sce", "model_stock", "slerp", "nuslerp",
        "fisher", "regmean",
    ]
    assert BASELINE_NAMES == (
        "base", "math", "lang", "graded_swap", "linear", "task_arithmetic", "lines", "ties", "dare_ties", "dare_linear",
        "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "sce", "model_stock", "slerp", "nuslerp", "revert",
        "fisher", "regmean",
    )
    for name, method in METHODS.items():
        assert method.name == name and method.summary and method.params_model is not None
    with pytest.raises(ConfigError, match="unknown method 'karcher'; valid methods: layer_swap, graded_swap, revert, linear"):
        get_method("karcher")


def test_method_modules_are_found_by_name():
    """Importing the package imports each of its modules: a method file needs no line anywhere else."""
    import pkgutil
    import sys

    import layerswap.merge.methods as pkg

    modules = {f"{pkg.__name__}.{i.name}" for i in pkgutil.iter_modules(pkg.__path__) if not i.name.startswith("_")}
    assert modules <= set(sys.modules)
    assert {type(m).__module__ for m in pkg.METHODS.values()} | {f"{pkg.__name__}.identity"} == modules


def test_sweep_baselines_are_the_sweeps_candidates():
    from layerswap.merge.methods import sweep_baselines

    names = ["base", "math", "lang", "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "revert"]
    got = sweep_baselines(names, num_layers=18, middle=None, density={"ties": 0.2, "dare_ties": 0.5, "dare_linear": 0.5})
    assert got == [
        ("base", "identity", {"source": "base"}),
        ("math", "identity", {"source": "math"}),
        ("lang", "identity", {"source": "lang"}),
        ("soup", "linear", {"weights": {"math": 0.5, "lang": 0.5}}),
        ("task-arithmetic", "task_arithmetic", {"weights": {"math": 1.0, "lang": 1.0}, "lambda": 1.0}),
        ("ties-d0.2", "ties", {"density": 0.2}),
        ("dare-ties-d0.5", "dare_ties", {"density": 0.5, "seed": 0}),
        ("dare-linear-d0.5", "dare_linear", {"density": 0.5, "seed": 0}),
        ("revert-m4-15", "revert", {"keep": {"math": list(range(4, 16)), "lang": [0, 1, 2, 3, 16, 17]}}),
    ]
    # one float for every density, the seed, the best swap's middle block, the user's order
    got = sweep_baselines(["revert", "dare_linear", "ties"], num_layers=6, middle=(1, 4), density=0.35, seed=5)
    assert got == [
        ("revert-m1-4", "revert", {"keep": {"math": [1, 2, 3, 4], "lang": [0, 5]}}),
        ("dare-linear-d0.35", "dare_linear", {"density": 0.35, "seed": 5}),
        ("ties-d0.35", "ties", {"density": 0.35}),
    ]
    assert sweep_baselines(["ties"], num_layers=6, middle=None) == [("ties-d0.2", "ties", {"density": 0.2})]  # params default
    with pytest.raises(ConfigError, match="unknown baseline 'best': valid baselines are base, math, lang"):
        sweep_baselines(["best"], num_layers=6, middle=None)


def test_identity_baseline_is_a_revert():
    from layerswap.merge.methods.identity import identity_merge

    assert identity_merge({"source": "base"}, 4) == {"method": "revert", "params": {"keep": {"math": []}}, "non_layer": "base"}
    assert identity_merge({"source": "lang"}, 3) == {"method": "revert", "params": {"keep": {"lang": [0, 1, 2]}}, "non_layer": "lang"}


def test_registering_a_name_twice_is_refused():
    from layerswap.merge.methods import MergeMethod, baseline, register

    class Again(MergeMethod):
        name = "ties"

    with pytest.raises(ValueError, match="registered twice"):
        register(Again)
    with pytest.raises(ValueError, match="registered twice"):
        baseline("ties")(lambda context: ("x", "ties", {}))


@pytest.fixture
def toy_method():
    """A method defined and registered here only: ``base + scale * sum_i delta_i``, plus a sweep baseline.

    It proves that a method is one class: the config, the plan, the engine (on disk and in memory),
    the CLI help and the sweep's baselines read it with no other file touched.
    """
    from pydantic import Field

    from layerswap.config import StrictModel
    from layerswap.merge.methods import Layout, MergeMethod, baseline, register, unregister
    from layerswap.merge.ops import Combine

    class ToyParams(StrictModel):
        scale: float = Field(0.5, gt=0)

    @register
    class Toy(MergeMethod):
        name = "toy_scale"
        summary = "base + scale * the sum of the deltas (a test-only method)"
        params_model = ToyParams
        needs_base = True

        def check(self, config, params):  # noqa: ANN001, ANN202
            if len(config.experts) < 2:
                raise ConfigError("toy_scale needs two experts")

        def layout(self, config, params, num_layers):  # noqa: ANN001, ANN202
            op = Combine(self.name, tuple((label, 1.0) for label in config.experts), lam=params.scale)
            return Layout((op,) * num_layers, op, tuple(config.experts))

        def combine(self, op, name, deltas, base):  # noqa: ANN001, ANN202
            total = torch.zeros_like(base)
            for d in deltas:
                total.add_(d)
            return total.mul_(op.lam)

    baseline("toy_scale")(lambda context: (f"toy-{context.num_layers}", "toy_scale", {"scale": 0.25}))
    try:
        yield Toy
    finally:
        unregister("toy_scale")


def test_a_method_is_one_registered_class(toy_method, tiny_experts, tmp_path):
    from typer.testing import CliRunner

    from layerswap.cli import app
    from layerswap.merge.methods import METHODS, sweep_baselines

    experts = {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])}
    data = {"method": "toy_scale", "base": str(tiny_experts["base"]), "experts": experts, "params": {"scale": 0.25}}
    # config validation: the params model, the shared rules and the method's own check
    with pytest.raises(ConfigError, match="unknown parameter 'scal' for method toy_scale; valid parameters: scale"):
        merge_config({**data, "params": {"scal": 1}})
    with pytest.raises(ConfigError, match="method toy_scale with non_layer merge needs a base"):
        merge_config({**data, "base": None})
    with pytest.raises(ConfigError, match="toy_scale needs two experts"):
        merge_config({**data, "experts": {"math": experts["math"]}})
    cfg = merge_config(data)
    # plan
    plan = build_plan(cfg, 6)
    assert plan.layer_ops[0].describe() == "base + toy_scale(math, lang)" and plan.non_layer_policy == "merge"
    # on disk and in memory, by the method's formula
    res = merge(cfg, tmp_path / "out")
    out, base, m, lang = _folders(res.out, tiny_experts["base"], tiny_experts["math"], tiny_experts["lang"])
    for name in (Q.format(2), "model.embed_tokens.weight"):
        b = base.get(name)
        assert torch.allclose(out.get(name), b + 0.25 * ((m.get(name) - b) + (lang.get(name) - b)), atol=1e-6), name
    sd = merged_state_dict(TensorCache.from_config(cfg), cfg)
    assert torch.allclose(sd[Q.format(2)], out.get(Q.format(2)))
    with pytest.raises(ConfigError, match="no mergekit equivalent"):
        merge(cfg, tmp_path / "out2", emit_mergekit=tmp_path / "mk.yaml")
    # the CLI: listed in the help, runs from a YAML
    runner = CliRunner()
    r = runner.invoke(app, ["merge", "--help"])
    assert r.exit_code == 0 and "toy_scale" in r.output and "a test-only method" in r.output, r.output
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["merge", str(tmp_path / "toy.yaml"), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert torch.equal(ModelFolder(tmp_path / "cli").get(Q.format(2)), out.get(Q.format(2)))
    # the sweep's baselines
    assert sweep_baselines(["toy_scale", "base"], num_layers=6, middle=None) == [
        ("toy-6", "toy_scale", {"scale": 0.25}), ("base", "identity", {"source": "base"})]
    assert list(METHODS)[-1] == "toy_scale"


def test_the_toy_method_is_gone_after_its_test():
    from layerswap.merge.methods import BASELINES, METHODS

    assert "toy_scale" not in METHODS and "toy_scale" not in BASELINES
    with pytest.raises(ConfigError, match="unknown method 'toy_scale'"):
        merge_config({"method": "toy_scale", "experts": {"a": "x"}})
