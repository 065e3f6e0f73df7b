"""The emitted mergekit YAML, run through mergekit (0.1.5, in-process) on tiny models, gives our tensors.

mergekit is in the ``dev`` extra, which CI installs (``.ci/run``): there these tests must run, so
with ``LAYERSWAP_REQUIRE_ALL`` set a missing mergekit fails these tests instead of skipping them.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import require_module

from layerswap.io import ModelFolder
from layerswap.merge import merge, merge_config, swap_config


@pytest.fixture(autouse=True, scope="module")
def _need_mergekit() -> None:
    require_module(
        "mergekit.merge",
        "mergekit is not installed (it is in the dev extra: pip install -e '.[dev]'); "
        "these tests run the emitted mergekit YAML through mergekit and compare its tensors with ours",
    )


def _run_mergekit(yaml_path, out):
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(yaml.safe_load(yaml_path.read_text()))
    from mergekit.merge import run_merge

    run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True))
    return ModelFolder(out)


def _compare(ours: ModelFolder, theirs: ModelFolder, *, exact: bool, atol: float = 1e-6) -> None:
    assert set(ours.names()) == set(theirs.names())
    for name in ours.names():
        a, b = ours.get(name), theirs.get(name)
        if exact:
            assert torch.equal(a, b), name
        else:
            assert torch.allclose(a, b, atol=atol, rtol=1e-5), name


def _experts(tiny_experts):
    return {"math": str(tiny_experts["math"]), "lang": str(tiny_experts["lang"])}


@pytest.mark.parametrize("non_layer", ["math", "lang"])
def test_passthrough_swap_matches_mergekit(tiny_experts, tmp_path, non_layer):
    cfg = swap_config(**_experts(tiny_experts), bottom=2, top=1, non_layer=non_layer)
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == "passthrough"
    _compare(ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"), exact=True)


def test_transition_swap_matches_mergekit_linear_slices(tiny_experts, tmp_path):
    cfg = swap_config(**_experts(tiny_experts), bottom=1, top=1, transition=1, base=str(tiny_experts["base"]), non_layer="base")
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == "linear"
    _compare(ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"), exact=False)


@pytest.mark.parametrize(
    "method,params",
    [
        ("ties", {"density": 0.4, "weights": {"math": 0.7, "lang": 0.5}, "lambda": 0.9}),
        ("task_arithmetic", {"weights": {"math": 0.8, "lang": 0.6}, "lambda": 0.5}),
        ("linear", {"weights": {"math": 0.25, "lang": 0.75}}),
        ("dare_ties", {"density": 1.0, "weights": {"math": 0.7, "lang": 0.5}}),
    ],
)
def test_named_methods_match_mergekit(tiny_experts, tmp_path, method, params):
    cfg = merge_config({"method": method, "base": str(tiny_experts["base"]), "experts": _experts(tiny_experts), "params": params})
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    assert yaml.safe_load((tmp_path / "mk.yaml").read_text())["merge_method"] == method
    _compare(ModelFolder(res.out), _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs"), exact=False)


# -------------------------------------------------------------------------- DARE below density 1
#
# At density 1 DARE drops nothing, so the parity test above cannot see a DARE bug. Below 1 the two
# tools cannot draw the same mask: mergekit calls ``torch.bernoulli`` on the global torch RNG, in
# its own tensor order, seeded once per run (``MergeOptions.random_seed``); layerswap seeds one
# generator per (seed, tensor name, expert label) so that a merge does not depend on tensor order.
# So the check is in two parts: (1) both tools get one identical mask, injected in place of their
# draw (a function of the delta's bits, the same in both since both compute ``expert - base`` in
# float32), and everything around the draw - which entries are dropped for which expert, the
# rescale, weights, sign election, lambda, the exported YAML - must agree to float32 rounding;
# (2) the real draws keep the same expected share of entries and rescale the same way.


def _shared_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """A pseudo-random keep mask that depends only on the delta's float32 bits."""
    bits = delta.detach().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    uniform = ((bits * 2654435761 + 40503) % (1 << 32)).to(torch.float64) / float(1 << 32)
    return uniform < density


@pytest.mark.parametrize(
    "method,params",
    [
        ("dare_ties", {"density": 0.5, "rescale": "l1", "weights": {"math": 0.7, "lang": 0.5}}),
        ("dare_linear", {"density": {"math": 0.5, "lang": 0.3}, "rescale": "l1", "lambda": 0.8}),
        ("dare_ties", {"density": 0.4, "rescale": "none", "normalize": True}),
    ],
)
def test_dare_below_density_one_matches_mergekit_with_one_mask(tiny_experts, tmp_path, monkeypatch, method, params):
    """Same mask injected into both tools (their random streams cannot match): same tensors."""
    import mergekit.sparsify as mk_sparsify

    from layerswap.merge.methods import _math

    calls = {"ours": 0, "theirs": 0}

    def our_mask(delta, density, generator):  # noqa: ANN001, ANN202
        calls["ours"] += 1
        return _shared_mask(delta, density)

    def their_bernoulli(tensor, density, rescale_norm=None):  # noqa: ANN001, ANN202 - mergekit's bernoulli, but the mask
        if density >= 1:
            return tensor
        calls["theirs"] += 1
        mask = _shared_mask(tensor, density).to(torch.float32)
        return mk_sparsify.rescaled_masked_tensor(tensor.to(torch.float32), mask, rescale_norm).to(tensor.dtype)

    monkeypatch.setattr(_math, "dare_mask", our_mask)
    monkeypatch.setattr(mk_sparsify, "bernoulli", their_bernoulli)
    cfg = merge_config({"method": method, "base": str(tiny_experts["base"]), "experts": _experts(tiny_experts), "params": params})
    res = merge(cfg, tmp_path / "ours", emit_mergekit=tmp_path / "mk.yaml")
    text = (tmp_path / "mk.yaml").read_text()
    assert "# note" not in text  # rescale l1 / none: mergekit states the same rule
    assert yaml.safe_load(text)["parameters"]["rescale"] is (params["rescale"] == "l1")
    theirs = _run_mergekit(tmp_path / "mk.yaml", tmp_path / "theirs")
    assert calls["ours"] > 0 and calls["theirs"] > 0
    ours = ModelFolder(res.out)
    _compare(ours, theirs, exact=False)
    name = "model.layers.3.self_attn.q_proj.weight"  # the mask did drop entries: not the density-1 result
    dense = merge(cfg.model_copy(update={"params": {**params, "density": 1.0}}), tmp_path / "dense")
    assert not torch.allclose(ours.get(name), ModelFolder(dense.out).get(name))


@pytest.mark.parametrize("density", [0.3, 0.5, 0.9])
def test_dare_real_draws_keep_the_same_share_and_rescale_like_mergekit(density):
    """Without injection: both tools keep ``density`` of the entries (within 5 sigma) and, with the
    L1 rule, scale the survivors by the same factor (the dropped mass over the kept)."""
    from mergekit.sparsify import RescaleNorm, SparsificationMethod, sparsify

    from layerswap.merge.methods import dare_drop, stable_seed

    n = 200_000
    delta = torch.randn(n, generator=torch.Generator().manual_seed(0))
    sigma = (density * (1 - density) / n) ** 0.5
    gen = torch.Generator().manual_seed(stable_seed(0, "w", "math"))
    ours = dare_drop(delta, density, gen, "l1")
    torch.manual_seed(0)
    theirs = sparsify(delta, density, SparsificationMethod.random, rescale_norm=RescaleNorm.l1)
    for out in (ours, theirs):
        kept = out != 0
        assert abs(kept.float().mean().item() - density) < 5 * sigma
        factor = delta.abs().sum() / delta[kept].abs().sum()
        assert torch.allclose(out[kept], delta[kept] * factor, rtol=1e-5)
        assert torch.allclose(out.abs().sum(), delta.abs().sum(), rtol=1e-4)
    by_density = dare_drop(delta, density, torch.Generator().manual_seed(1), "density")
    kept = by_density != 0
    assert abs(kept.float().mean().item() - density) < 5 * sigma
    assert torch.equal(by_density[kept], delta[kept] / density)
