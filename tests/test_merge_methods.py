"""The merge methods researchers compare against (DELLA, Breadcrumbs, SCE, Model Stock, SLERP, NuSLERP,
LiNeS, the graded swap): formulas by hand, and parity with mergekit 0.1.5 on tiny models of three
architectures through the YAML that ``--emit-mergekit`` writes.

mergekit is in the ``dev`` extra, which CI installs: with ``LAYERSWAP_REQUIRE_ALL`` set a missing
mergekit fails the parity tests instead of skipping them.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import require_module

from layerswap.errors import ConfigError
from layerswap.io import ModelFolder
from layerswap.merge import build_plan, merge, merge_config
from layerswap.testing import planted_expert

Q = "model.layers.{}.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def arch_experts(tiny_root, tiny_experts, tiny_qwen2, tiny_gemma3):
    """Planted math/lang pairs on the tiny Llama, Qwen2 and Gemma 3 (each 4-6 layers)."""
    out = {"llama": tiny_experts}
    for arch, base in (("qwen2", tiny_qwen2), ("gemma3", tiny_gemma3)):
        math_, lang = tiny_root / f"{arch}-math-m", tiny_root / f"{arch}-lang-m"
        if not math_.exists():
            planted_expert(base, math_, layers=[1, 2], scale=0.05, noise=0.003, seed=11)
            planted_expert(base, lang, layers=[0, 3], scale=0.05, noise=0.003, seed=12)
        out[arch] = {"base": base, "math": math_, "lang": lang}
    return out


def _config(experts, method, params, *, base=True, non_layer=None):
    data = {
        "method": method,
        "experts": {"math": str(experts["math"]), "lang": str(experts["lang"])},
        "params": params,
    }
    if base:
        data["base"] = str(experts["base"])
    if non_layer:
        data["non_layer"] = non_layer
    return merge_config(data)


def _run_mergekit(yaml_path, out):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(yaml.safe_load(yaml_path.read_text()))
    run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True))
    return ModelFolder(out)


def _compare(ours: ModelFolder, theirs: ModelFolder, atol: float = 2e-6) -> None:
    assert set(ours.names()) == set(theirs.names())
    for name in ours.names():
        a, b = ours.get(name), theirs.get(name)
        assert torch.allclose(a, b, atol=atol, rtol=1e-5), (name, (a - b).abs().max().item())


def _parity(experts, tmp_path, method, params, *, base=True):
    cfg = _config(experts, method, params, base=base)
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    text = (tmp_path / "mk.yaml").read_text()
    assert "# note" not in text, text
    assert yaml.safe_load(text)["merge_method"] == method
    _compare(ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"))
    return ModelFolder(res.out)


DETERMINISTIC = [
    ("breadcrumbs", {"density": 0.7, "gamma": 0.05, "weights": {"math": 0.8, "lang": 0.6}}),
    ("breadcrumbs_ties", {"density": 0.6, "gamma": 0.02, "normalize": True, "lambda": 0.9}),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "rescale": "l1"}),
    ("sce", {"select_topk": 0.3}),
    ("sce", {}),
    ("model_stock", {}),
    ("model_stock", {"filter_wise": True}),
    ("slerp", {"t": 0.3}),
    ("slerp", {"t": [0.0, 0.8, 0.3], "filters": {"mlp": [1.0, 0.2], "self_attn": 0.6}}),
    ("nuslerp", {"weights": {"math": 0.7, "lang": 0.3}}),
    ("nuslerp", {"weights": {"math": [1.0, 0.2], "lang": 0.5}, "flatten": False}),
    ("nuslerp", {"weights": {"math": 0.4, "lang": 0.6}, "flatten": False, "row_wise": True}),
    ("ties", {"density": 0.4, "lines": {"alpha": 0.3, "beta": 0.7}}),
    ("lines", {"weights": {"math": 1.0, "lang": 1.0}, "lines": {"alpha": 0.5, "beta": 0.5}}),
]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("method,params", DETERMINISTIC, ids=[f"{m}-{i}" for i, (m, _) in enumerate(DETERMINISTIC)])
def test_deterministic_methods_match_mergekit(arch_experts, tmp_path, arch, method, params):
    require_module("mergekit.merge", "mergekit is not installed (dev extra): the parity tests run its merges")
    if method == "lines":
        method = "task_arithmetic"  # the lines method is task arithmetic with LiNeS: mergekit reads it as such
        cfg = _config(arch_experts[arch], "lines", params)
        merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
        assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == method
        _compare(ModelFolder(tmp_path / "ours"), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"))
        return
    _parity(arch_experts[arch], tmp_path, method, params, base=method != "slerp")


def test_graded_swap_matches_mergekit_linear_slices(tiny_experts, tmp_path):
    require_module("mergekit.merge", "mergekit is not installed (dev extra): the parity tests run its merges")
    cfg = _config(tiny_experts, "graded_swap", {"bottom": 2, "top": 1, "width": 2.5})
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == "linear"
    _compare(ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"))


# -------------------------------------------------------------------------- DELLA
#
# As for DARE (tests/test_merge_mergekit.py): the two tools cannot draw the same mask (mergekit draws
# with torch.bernoulli on the global RNG, in its own tensor order), so (1) one identical stream of
# uniforms is injected into both, a function of each keep-probability tensor's bits and positions,
# and everything around the draw must agree; (2) the real draws keep the same share and rescale alike.


def _shared_uniform(probs: torch.Tensor) -> torch.Tensor:
    bits = probs.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64).reshape(-1)
    mixed = bits + torch.arange(bits.numel(), dtype=torch.int64) * 40503
    return (((mixed * 2654435761 + 12345) % (1 << 32)).to(torch.float64) / float(1 << 32)).reshape(probs.shape)


class _TorchWithSharedBernoulli:
    """mergekit.sparsify's ``torch``, with ``bernoulli`` drawing the shared stream."""

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(torch, name)

    @staticmethod
    def bernoulli(probs):  # noqa: ANN001, ANN205
        return (_shared_uniform(probs) < probs).to(probs.dtype)


@pytest.mark.parametrize(
    "method,params",
    [
        ("della", {"density": 0.5, "epsilon": 0.2, "rescale": "l1", "weights": {"math": 0.7, "lang": 0.5}}),
        ("della_linear", {"density": {"math": 0.6, "lang": 0.4}, "epsilon": 0.1, "rescale": "l1", "lambda": 0.8}),
        ("della", {"density": 0.4, "epsilon": 0.15, "rescale": "none", "normalize": False}),
    ],
)
def test_della_matches_mergekit_with_one_random_stream(arch_experts, tmp_path, monkeypatch, method, params):
    require_module("mergekit.merge", "mergekit is not installed (dev extra): the parity tests run its merges")
    import mergekit.sparsify as mk_sparsify

    from layerswap.merge.methods import della

    calls = {"ours": 0}

    def our_mask(probs, generator):  # noqa: ANN001, ANN202
        calls["ours"] += 1
        return _shared_uniform(probs) < probs

    monkeypatch.setattr(della, "della_mask", our_mask)
    monkeypatch.setattr(mk_sparsify, "torch", _TorchWithSharedBernoulli())
    experts = arch_experts["qwen2"]
    ours = _parity(experts, tmp_path, method, params)
    assert calls["ours"] > 0
    dense = merge(_config(experts, method, {**params, "density": 1.0}), tmp_path / "dense")
    name = Q.format(1)
    assert not torch.allclose(ours.get(name), ModelFolder(dense.out).get(name))  # entries were dropped


@pytest.mark.parametrize("density,epsilon", [(0.3, 0.1), (0.5, 0.2), (0.8, 0.15)])
def test_della_real_draws_keep_the_same_share_and_favour_large_entries_like_mergekit(density, epsilon):
    require_module("mergekit.sparsify", "mergekit is not installed (dev extra)")
    from merge_checks import assert_della_draws_like_mergekit

    from layerswap.merge.methods.della import della_drop, della_probabilities

    rows, cols = 200, 1000
    delta = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    # global seed not 0: the global stream seeded 0 is the one that drew ``delta``, and correlates with it
    assert_della_draws_like_mergekit(delta, density, epsilon, global_seed=1234)
    by_prob = della_drop(delta, density, epsilon, torch.Generator().manual_seed(1), "probability")
    kept = by_prob != 0
    probs = della_probabilities(delta, density, epsilon)
    assert torch.allclose(by_prob[kept], delta[kept] / probs[kept])
    assert probs.min().item() == pytest.approx(density - epsilon) and probs.max().item() == pytest.approx(density + epsilon)


# -------------------------------------------------------------------------- formulas by hand


def test_lines_scales_each_layers_update_by_depth(tiny_experts, tmp_path):
    params = {"weights": {"math": 0.6, "lang": 0.4}, "lambda": 2.0, "lines": {"alpha": 0.2, "beta": 0.6}}
    cfg = _config(tiny_experts, "task_arithmetic", params)
    plan = build_plan(cfg, 6)
    assert [round(op.lam, 6) for op in plan.layer_ops] == [round(2.0 * (0.2 + 0.6 * i / 5), 6) for i in range(6)]
    assert plan.non_layer_op.lam == pytest.approx(0.4)
    out = ModelFolder(merge(cfg, tmp_path / "out").out)
    b, m, lang = (ModelFolder(tiny_experts[k]) for k in ("base", "math", "lang"))
    for i in (0, 3, 5):
        name = Q.format(i)
        scale = 2.0 * (0.2 + 0.6 * i / 5)
        expected = b.get(name) + scale * (0.6 * (m.get(name) - b.get(name)) + 0.4 * (lang.get(name) - b.get(name)))
        assert torch.allclose(out.get(name), expected, atol=1e-6)
    # composes with ties: the same per-layer scale on ties's merged delta
    ties = build_plan(_config(tiny_experts, "ties", {"density": 0.3, "lines": {"alpha": 0.0, "beta": 1.0}}), 6)
    assert [op.lam for op in ties.layer_ops] == [i / 5 for i in range(6)] and ties.layer_ops[0].densities == (0.3, 0.3)


def test_graded_swap_weights_follow_a_raised_cosine(tiny_experts, tmp_path):
    from layerswap.merge.methods._depth import graded_outer_weight

    assert [graded_outer_weight(i, 18, 5, 2, 3.0) for i in (0, 3, 4, 5, 6, 15, 16, 17)] == pytest.approx(
        [1.0, 1.0, 0.75, 0.25, 0.0, 0.25, 0.75, 1.0])
    hard = build_plan(_config(tiny_experts, "graded_swap", {"bottom": 2, "top": 1, "width": 0.5}), 6)
    swap = build_plan(_config(tiny_experts, "layer_swap", {"bottom": 2, "top": 1}), 6)
    assert hard.layer_ops == swap.layer_ops and hard.is_selection
    res = merge(_config(tiny_experts, "graded_swap", {"bottom": 2, "top": 1, "width": 2.0}), tmp_path / "out")
    out, m, lang = ModelFolder(res.out), ModelFolder(tiny_experts["math"]), ModelFolder(tiny_experts["lang"])
    w = 0.5 * (1 - math.cos(math.pi * 0.25))  # layer 2: half a layer past the cut at 1.5, width 2
    assert torch.allclose(out.get(Q.format(2)), (1 - w) * m.get(Q.format(2)) + w * lang.get(Q.format(2)), atol=1e-6)
    assert torch.equal(out.get(Q.format(0)), lang.get(Q.format(0))) and res.copied > 0


def test_model_stock_and_slerp_by_hand():
    from layerswap.merge.methods.model_stock import model_stock_merge
    from layerswap.merge.methods.slerp import slerp

    d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    assert torch.allclose(model_stock_merge([d1.clone(), d2.clone()], False), t * (d1 + d2) / 2)
    assert torch.allclose(model_stock_merge([d1.clone(), -d1.clone()], False), torch.zeros(2))  # opposite: base kept
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    got = slerp(0.5, v0.clone(), v1)
    s = math.sin(math.pi / 4) / math.sin(math.pi / 2)
    assert torch.allclose(got, torch.tensor([s, 2 * s]))
    assert torch.allclose(slerp(0.25, v0.clone(), 3 * v0), v0 * 0.75 + 3 * v0 * 0.25)  # collinear: linear


def test_new_baselines_are_sweep_candidates():
    from layerswap.merge.methods import sweep_baselines

    got = sweep_baselines(
        ["graded_swap", "lines", "della", "breadcrumbs_ties", "sce", "model_stock", "slerp", "nuslerp"],
        num_layers=18, middle=(5, 15), density={"della": 0.4}, seed=3,
    )
    assert got == [
        ("graded-b5-u2-w3", "graded_swap", {"bottom": 5, "top": 2, "width": 3.0}),
        ("lines-a0.5-b0.5", "lines", {"weights": {"math": 1.0, "lang": 1.0}, "lines": {"alpha": 0.5, "beta": 0.5}}),
        ("della-d0.4", "della", {"density": 0.4, "seed": 3}),
        ("breadcrumbs-ties-d0.9", "breadcrumbs_ties", {"density": 0.9}),
        ("sce", "sce", {"select_topk": 1.0}),
        ("model-stock", "model_stock", {}),
        ("slerp", "slerp", {"t": 0.5}),
        ("nuslerp", "nuslerp", {"weights": {"math": 1.0, "lang": 1.0}}),
    ]


@pytest.mark.parametrize(
    "method,params,experts,match",
    [
        ("della", {"density": 0.3, "epsilon": 0.3}, 2, "keep probabilities outside"),
        ("della", {"density": 1.5}, 2, "density 1.5 of 'math' is out of range"),
        ("breadcrumbs", {"density": 0.95, "gamma": 0.1}, 2, "exceed 1"),
        ("breadcrumbs", {"gamma": 1.5}, 2, "gamma"),
        ("sce", {"select_topk": 0}, 2, "select_topk"),
        ("slerp", {"t": 1.2}, 2, r"slerp t 1.2 is outside \[0, 1\]"),
        ("slerp", {"t": [0.2, -0.1]}, 2, "outside"),
        ("slerp", {}, 1, "exactly two experts"),
        ("nuslerp", {}, 3, "exactly two experts"),
        ("model_stock", {}, 1, "at least two experts"),
        ("ties", {"lines": {"alpha": 0.5, "beta": -0.8}}, 2, "scales the last layer by -0.3"),
        ("lines", {"lines": {"alpha": -0.1, "beta": 1.0}}, 2, "scales layer 0 by -0.1"),
        ("graded_swap", {"bottom": 3, "top": 3}, 2, "leaves no middle layer"),
    ],
)
def test_bad_parameters_are_one_line_errors(tiny_experts, method, params, experts, match):
    labels = ["math", "lang", "extra"][:experts]
    data = {"method": method, "base": str(tiny_experts["base"]), "params": params,
            "experts": {k: str(tiny_experts["math"]) for k in labels}}
    with pytest.raises(ConfigError, match=match):
        build_plan(merge_config(data), 6)


@pytest.mark.parametrize(
    "method,params",
    [("della", {"density": 0.5}), ("slerp", {"t": [0.2, 0.9]}), ("sce", {"select_topk": 0.5}), ("graded_swap", {"bottom": 1, "top": 1})],
)
def test_in_memory_merge_equals_the_written_one(tiny_experts, tmp_path, method, params):
    from layerswap.merge import TensorCache, merged_state_dict

    cfg = _config(tiny_experts, method, params)
    out = ModelFolder(merge(cfg, tmp_path / "out").out)
    sd = merged_state_dict(TensorCache.from_config(cfg), cfg)
    for name in (Q.format(1), Q.format(4), "model.embed_tokens.weight"):
        assert torch.allclose(sd[name], out.get(name), atol=1e-6), name


@pytest.fixture(scope="module")
def bf16_experts(tiny_root, tiny_tokenizer):
    """A bf16 Llama pair (both tools compute in float32 and cast the result to bf16 once)."""
    from layerswap.testing import make_tiny_model

    base = tiny_root / "llama-bf16-base"
    if not base.exists():
        make_tiny_model(base, "llama", layers=4, dtype=torch.bfloat16, tokenizer=tiny_tokenizer, seed=5)
        planted_expert(base, tiny_root / "llama-bf16-math", layers=[1, 2], scale=0.05, noise=0.003, seed=21)
        planted_expert(base, tiny_root / "llama-bf16-lang", layers=[0, 3], scale=0.05, noise=0.003, seed=22)
    return {"base": base, "math": tiny_root / "llama-bf16-math", "lang": tiny_root / "llama-bf16-lang"}


@pytest.mark.parametrize(
    "method,params",
    [("breadcrumbs_ties", {"density": 0.6, "gamma": 0.02}), ("model_stock", {}), ("slerp", {"t": [0.1, 0.9]}),
     ("nuslerp", {"weights": {"math": 0.3, "lang": 0.7}}), ("task_arithmetic", {"lines": {"alpha": 0.2, "beta": 0.8}})],
)
def test_bf16_models_match_mergekit_within_bf16_rounding(bf16_experts, tmp_path, method, params):
    require_module("mergekit.merge", "mergekit is not installed (dev extra): the parity tests run its merges")
    cfg = _config(bf16_experts, method, params, base=method != "slerp")
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    doc = yaml.safe_load((tmp_path / "mk.yaml").read_text())
    assert (doc["dtype"], doc["out_dtype"]) == ("float32", "bfloat16")  # float32 arithmetic, one cast at the end
    ours, theirs = ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs")
    for name in ours.names():
        a, b = ours.get(name).float(), theirs.get(name).float()
        assert ours.info(name).dtype == theirs.info(name).dtype == "BF16"
        # float32 results that differ by float32 rounding may round to neighbouring bf16 values: one unit
        # in the last place (bf16 keeps 8 significant bits) at most
        ulp = torch.maximum(a.abs(), b.abs()) * 2.0**-7
        assert ((a - b).abs() <= ulp).all(), (name, (a - b).abs().max().item())


def test_new_methods_run_from_a_yaml_on_the_cli(tiny_experts, tmp_path):
    from typer.testing import CliRunner

    from layerswap.cli import app

    data = {"method": "breadcrumbs_ties", "base": str(tiny_experts["base"]),
            "experts": {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])},
            "params": {"density": 0.8, "gamma": 0.05, "lines": {"alpha": 0.5, "beta": 0.5}}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["merge", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    expected = ModelFolder(merge(merge_config(data), tmp_path / "py").out)
    assert torch.equal(ModelFolder(tmp_path / "cli").get(Q.format(3)), expected.get(Q.format(3)))
    r = CliRunner().invoke(app, ["merge", "--help"])
    assert all(m in r.output for m in ("della_linear", "breadcrumbs_ties", "model_stock", "nuslerp", "graded_swap")), r.output


def test_finite_within_agrees_with_isfinite_and_the_cast_range():
    """The merge's one-pass NaN/Inf check (io.finite.finite_within) says what torch.isfinite(t).all() says."""
    from layerswap.io.finite import finite_within

    bf16_max = torch.finfo(torch.bfloat16).max
    for value, finite, fits in [(1.0, True, True), (float("nan"), False, False), (float("inf"), False, False),
                                (-float("inf"), False, False), (3.0e38, True, True), (3.4e38, True, False)]:
        t = torch.randn(64, 32)
        t[5, 7] = value
        assert finite_within(t) is finite and finite == bool(torch.isfinite(t).all()), value
        assert finite_within(t, bf16_max) is fits, value
        if not fits and finite:  # beyond bf16's range: the cast overflows, which the writer then finds
            assert not torch.isfinite(t.to(torch.bfloat16)).all()
    assert finite_within(torch.empty(0)) and finite_within(torch.zeros(3, dtype=torch.bfloat16))
