"""The emitted mergekit YAML, run through mergekit (0.1.5, in-process) on tiny models, gives our tensors."""

from __future__ import annotations

import pytest
import torch
import yaml

from layerswap.checkpoint import ModelFolder
from layerswap.merge import merge, merge_config, swap_config

mergekit = pytest.importorskip("mergekit.merge")


def _run_mergekit(yaml_path, out):
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    cfg = MergeConfiguration.model_validate(yaml.safe_load(yaml_path.read_text()))
    mergekit.run_merge(cfg, str(out), MergeOptions(copy_tokenizer=False, lazy_unpickle=False, quiet=True))
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
