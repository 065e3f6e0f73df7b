"""The architecture map on every tiny fixture and on known naming schemes."""

from __future__ import annotations

import pytest

from layerswap.errors import CheckpointError, ConfigError
from layerswap.io import ModelFolder, architecture_from_config, parse_layer_spec
from layerswap.testing import make_tiny_model


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_gemma3"])
def test_every_tensor_is_classified(request, fixture):
    folder = ModelFolder(request.getfixturevalue(fixture))
    arch = folder.architecture
    assert arch.known
    layers = set()
    for name in folder.names():
        role = arch.classify(name)
        if role.layer is None:
            assert role.module in ("embed_tokens", "norm", "lm_head"), name
        else:
            layers.add(role.layer)
            assert role.module in name
    assert layers == set(range(arch.num_layers))


def test_tied_embeddings(tiny_llama, tiny_gemma3):
    assert ModelFolder(tiny_gemma3).architecture.tied_embeddings
    assert not ModelFolder(tiny_llama).architecture.tied_embeddings
    assert "lm_head.weight" not in ModelFolder(tiny_gemma3)


def test_qwen2_biases():
    arch = architecture_from_config({"model_type": "qwen2", "num_hidden_layers": 2})
    role = arch.classify("model.layers.1.self_attn.k_proj.bias")
    assert (role.layer, role.module, role.param) == (1, "k_proj", "bias")


def test_phi3_fused_projections(tmp_path, tiny_tokenizer):
    folder = ModelFolder(make_tiny_model(tmp_path / "phi3", "phi3", tokenizer=tiny_tokenizer))
    modules = {folder.architecture.classify(n).module for n in folder.names()}
    assert {"qkv_proj", "gate_up_proj"} <= modules
    assert folder.architecture.fused["qkv_proj"] == ("q_proj", "k_proj", "v_proj")


def test_gemma3_multimodal_names():
    arch = architecture_from_config({"model_type": "gemma3", "text_config": {"num_hidden_layers": 34}})
    assert arch.num_layers == 34
    assert arch.classify("model.language_model.layers.33.mlp.down_proj.weight").layer == 33
    assert arch.classify("model.language_model.embed_tokens.weight").module == "embed_tokens"


def test_config_without_layers():
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        architecture_from_config({"model_type": "llama"})


def test_layer_spec():
    assert parse_layer_spec("0-2,16-17", 18) == [0, 1, 2, 16, 17]
    assert parse_layer_spec("-2--1", 18) == [16, 17]
    with pytest.raises(ConfigError, match="valid layers are 0..17"):
        parse_layer_spec("0-18", 18)
    with pytest.raises(ConfigError, match="cannot read"):
        parse_layer_spec("a-b", 18)
