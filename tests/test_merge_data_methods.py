"""The data-aware merges (issue 30): Fisher merging and RegMean, by hand and end to end on the tiny Llama.

The formulas are checked against independent computations (the weighted average for equal Fishers,
numpy's least squares on the stacked inputs for RegMean); the merges run from a YAML, from the
sweep's baselines and from Python, and read the statistics they cache once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from layerswap.errors import ConfigError
from layerswap.io import ModelFolder
from layerswap.merge import load_merge_config, merge, merge_config
from layerswap.merge.methods import sweep_baselines
from layerswap.merge.methods._data import StatsReader, stats_file
from layerswap.merge.methods.fisher import fisher_merge
from layerswap.merge.methods.regmean import regmean_merge

MATH = [
    "Question: Janet has 3 apples and buys 2 more. How many apples does she have? Answer: 5",
    "Question: 4 boxes hold 6 pens each. How many pens? Answer: 24",
    "Question: A train travels 60 km in 1 hour. How far in 3 hours? Answer: 180",
    "Question: Sam had 10 sweets and ate 4. How many are left? Answer: 6",
]
LANG = [
    "Habari za asubuhi. Leo ni siku nzuri sana.",
    "Juma ana machungwa manne na anapewa mengine matatu.",
    "Tunasoma lugha na hesabu shuleni kila siku.",
    "Mvua inanyesha leo jioni katika mji wetu.",
]
Q = "model.layers.{}.self_attn.q_proj.weight"


@pytest.fixture(autouse=True)
def _quiet_cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    monkeypatch.setenv("LAYERSWAP_CACHE", str(tmp_path_factory.getbasetemp() / "data-merge-cache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data-merge")
    (root / "math.txt").write_text("\n".join(MATH) + "\n")
    (root / "lang.txt").write_text("\n".join(LANG) + "\n")
    return {"math": str(root / "math.txt"), "lang": str(root / "lang.txt")}


def _config(experts, method, data, **params):
    return merge_config(
        {"method": method, "experts": {k: str(experts[k]) for k in ("math", "lang")}, "params": {"data": data, "batch_size": 2, **params}}
    )


# ------------------------------------------------------------------------------------------ formulas


def test_fisher_with_equal_fishers_is_the_weighted_average():
    gen = torch.Generator().manual_seed(0)
    a, b, f = (torch.randn(5, 7, generator=gen) for _ in range(3))
    merged = fisher_merge([a.clone(), b.clone()], [f.abs(), f.abs().clone()], [0.25, 0.75], 1e-6)
    assert torch.allclose(merged, 0.25 * a + 0.75 * b, atol=1e-6)
    # Unequal Fishers pull each entry toward the expert that cares more about it.
    one = fisher_merge([a.clone(), b.clone()], [torch.full_like(a, 9.0), torch.ones_like(b)], [0.5, 0.5], 1e-6)
    assert torch.allclose(one, 0.9 * a + 0.1 * b, atol=1e-6)


def test_regmean_is_the_least_squares_fit_on_the_stacked_inputs():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) * 2.0]
    ws = [rng.normal(size=(4, 6)), rng.normal(size=(4, 6))]  # (out, in), torch's convention
    want, *_ = np.linalg.lstsq(np.vstack(xs), np.vstack([x @ w.T for x, w in zip(xs, ws, strict=True)]), rcond=None)
    grams = [torch.tensor(x.T @ x, dtype=torch.float32) for x in xs]
    got = regmean_merge([torch.tensor(w, dtype=torch.float32) for w in ws], grams, [0.5, 0.5], alpha=1.0)
    assert np.allclose(got.numpy(), want.T, atol=1e-4)
    # alpha = 0 keeps only the diagonals: each input feature's weights are a Gram-weighted mean.
    d = [np.diag(x.T @ x) for x in xs]
    diag = regmean_merge([torch.tensor(w, dtype=torch.float32) for w in ws], [torch.tensor(x.T @ x, dtype=torch.float32) for x in xs], [0.5, 0.5], alpha=0.0)
    assert np.allclose(diag.numpy(), (ws[0] * d[0] + ws[1] * d[1]) / (d[0] + d[1]), atol=1e-5)


def test_regmean_of_one_expert_is_that_expert_even_when_its_gram_is_singular():
    w = torch.randn(3, 5)
    x = torch.randn(2, 5)  # two tokens, five inputs: a rank-2 Gram
    assert torch.allclose(regmean_merge([w.clone()], [torch.eye(5) * 3], [1.0], 1.0), w, atol=1e-5)
    assert torch.allclose(regmean_merge([w.clone()], [x.T @ x], [1.0], 1.0), w, atol=1e-4)


# ------------------------------------------------------------------------------------------ end to end


def test_fisher_merge_from_yaml_matches_the_formula_on_its_cached_fishers(tiny_experts, data, tmp_path):
    cfg_path = tmp_path / "fisher.yaml"
    cfg_path.write_text(yaml.safe_dump({"method": "fisher", "experts": {k: str(tiny_experts[k]) for k in ("math", "lang")},
                                        "params": {"data": data, "batch_size": 2, "weights": {"math": 1.0, "lang": 3.0}}}))
    cfg = load_merge_config(str(cfg_path))
    res = merge(cfg, tmp_path / "out")
    out, math, lang = ModelFolder(res.out), ModelFolder(tiny_experts["math"]), ModelFolder(tiny_experts["lang"])
    spec = res.plan.layer_ops[0].option("stats")
    fm, fl = (StatsReader(stats_file(spec, label)) for label in ("math", "lang"))
    for name in (Q.format(2), "model.embed_tokens.weight", "model.norm.weight"):
        want = fisher_merge([math.get(name), lang.get(name)], [fm.get(name), fl.get(name)], [0.25, 0.75], 1e-6)
        assert torch.allclose(out.get(name), want, atol=1e-6), name
    assert json.loads((res.out / "layerswap.json").read_text())["method"] == "fisher"
    # A second merge reads the cached Fishers: nothing is recomputed (the files are not rewritten).
    stamp = stats_file(spec, "math").stat().st_mtime_ns
    merge(cfg, tmp_path / "again")
    assert stats_file(spec, "math").stat().st_mtime_ns == stamp



def test_statistics_files_are_found_once_per_merge_not_per_tensor(tiny_experts, data, tmp_path, monkeypatch):
    """Finding an expert's statistics file hashes its file list: once per merge, then one dict lookup per tensor."""
    from layerswap.merge.methods import _data

    calls: list[str] = []
    real = _data.stats_file

    def counted(spec, label):  # noqa: ANN001, ANN202
        calls.append(label)
        return real(spec, label)

    monkeypatch.setattr(_data, "stats_file", counted)
    cfg = _config(tiny_experts, "regmean", data)
    res = merge(cfg, tmp_path / "out")
    assert res.computed > 2  # many tensors read the statistics...
    assert sorted(calls) == ["lang", "math"]  # ...whose files were found once
    merge(cfg, tmp_path / "again")  # the next merge looks again (an expert may have changed), once
    assert sorted(calls) == ["lang", "lang", "math", "math"]


def _inputs(folder, name, texts):
    """The inputs of linear ``name`` over ``texts`` (non-padding tokens), captured independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "right"
    module = model.get_submodule(name.removesuffix(".weight"))
    rows = []
    for i in range(0, len(texts), 2):
        enc = tok(texts[i : i + 2], return_tensors="pt", padding=True, truncation=True, max_length=128)
        mask = enc["attention_mask"].bool()
        handle = module.register_forward_hook(lambda m, a, o, mask=mask: rows.append(a[0][mask]))
        with torch.no_grad():
            model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        handle.remove()
    return torch.cat(rows).double().numpy()


def test_regmean_merge_from_yaml_is_the_least_squares_fit_of_both_experts(tiny_experts, data, tmp_path):
    cfg = _config(tiny_experts, "regmean", data, alpha=1.0)
    res = merge(cfg, tmp_path / "out")
    out, math, lang = ModelFolder(res.out), ModelFolder(tiny_experts["math"]), ModelFolder(tiny_experts["lang"])
    name = Q.format(3)
    xs = [_inputs(tiny_experts["math"], name, MATH), _inputs(tiny_experts["lang"], name, LANG)]
    ws = [math.get(name).double().numpy(), lang.get(name).double().numpy()]
    want, *_ = np.linalg.lstsq(np.vstack(xs), np.vstack([x @ w.T for x, w in zip(xs, ws, strict=True)]), rcond=None)
    assert np.allclose(out.get(name).numpy(), want.T, atol=2e-4)
    for other in ("model.embed_tokens.weight", "model.layers.3.input_layernorm.weight"):  # not linear: the average
        assert torch.allclose(out.get(other), (math.get(other) + lang.get(other)) / 2, atol=1e-6)


def test_regmean_of_one_expert_returns_it(tiny_experts, data, tmp_path):
    cfg = merge_config({"method": "regmean", "experts": {"math": str(tiny_experts["math"])}, "params": {"data": {"math": data["math"]}, "alpha": 1.0}})
    out, math = ModelFolder(merge(cfg, tmp_path / "out").out), ModelFolder(tiny_experts["math"])
    for name in math.names():
        assert torch.allclose(out.get(name), math.get(name), atol=1e-4), name


def test_data_merges_are_sweep_baselines(tiny_experts, data, tmp_path):
    found = sweep_baselines(["fisher", "regmean"], num_layers=6, middle=(2, 4), data=data)
    assert [(n, m) for n, m, _ in found] == [("fisher", "fisher"), ("regmean", "regmean")]
    for name, method, params in found:
        cfg = merge_config({"method": method, "experts": {k: str(tiny_experts[k]) for k in ("math", "lang")}, "params": params})
        assert merge(cfg, tmp_path / name).computed > 0
    with pytest.raises(ConfigError, match="baseline fisher runs each expert over its own data"):
        sweep_baselines(["fisher"], num_layers=6, middle=None)


def test_data_merges_run_in_memory_as_the_sweep_runs_them(tiny_experts, data, tmp_path):
    from transformers import AutoModelForCausalLM

    from layerswap.merge.memory import TensorCache, apply_merge

    cfg = _config(tiny_experts, "fisher", data)
    on_disk = ModelFolder(merge(cfg, tmp_path / "out").out)
    model = AutoModelForCausalLM.from_pretrained(tiny_experts["math"], dtype=torch.float32)
    apply_merge(model, TensorCache.from_config(cfg), cfg)
    assert torch.equal(model.state_dict()[Q.format(1)], on_disk.get(Q.format(1)))


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        ("fisher", {}, "fisher reads each expert's own data and none was given"),
        ("regmean", {"data": {"math": "gsm8k"}}, "expert 'lang' has no data spec"),
        ("regmean", {"data": {"math": "gsm8k", "lang": "ntrex:sw"}, "alpha": 1.5}, "alpha 1.5 is outside"),
        ("fisher", {"data": {"math": "gsm8k", "lang": "ntrex:sw"}, "floor": 0}, "floor 0 must be a positive number"),
        ("fisher", {"data": {"math": "gsm8k", "lang": "ntrex:sw"}, "examples": 0}, "params.examples 0"),
    ],
)
def test_bad_data_merge_params_are_one_line(tiny_experts, method, params, match):
    with pytest.raises(ConfigError, match=match):
        merge_config({"method": method, "experts": {k: str(tiny_experts[k]) for k in ("math", "lang")}, "params": params})


def test_lora_expert_without_its_base_is_refused_before_reading(tiny_experts, tiny_lora, data):
    with pytest.raises(ConfigError, match="expert 'lang' is a LoRA adapter and regmean runs it over its data: add base"):
        merge_config({"method": "regmean", "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_lora)}, "params": {"data": data}})


def test_lora_expert_with_its_base_runs_as_base_plus_adapter(tiny_experts, tiny_lora, data, tmp_path):
    cfg = merge_config({"method": "fisher", "base": str(tiny_experts["base"]), "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_lora)},
                        "params": {"data": data, "batch_size": 2}})
    res = merge(cfg, tmp_path / "out")
    assert res.output == "full" and torch.isfinite(ModelFolder(res.out).get(Q.format(1))).all()


def test_the_sweep_config_gives_the_data_baselines_their_data():
    from layerswap.sweep.candidates import baseline_candidates
    from layerswap.sweep.config import CandidatesSpec

    data = {"math": "gsm8k", "lang": "ntrex:sw"}
    found = baseline_candidates(CandidatesSpec(baselines=["fisher", "regmean"], baseline_data=data), 6, None)
    assert [(c.name, c.method, c.params["data"]) for c in found] == [("fisher", "fisher", data), ("regmean", "regmean", data)]
    with pytest.raises(ConfigError, match="candidates.baseline_data"):
        baseline_candidates(CandidatesSpec(baselines=["regmean"]), 6, None)
