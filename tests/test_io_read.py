"""The core's reading side: lazy listing, dtype codes, LoRA deltas, compatibility, refusals of damaged input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from layerswap.errors import CheckpointError, ConfigError, IncompatibleModelsError, InputPathError
from layerswap.io import (
    DTYPE_SIZES,
    DeltaView,
    LoraAdapter,
    ModelFolder,
    dtype_code,
    open_checkpoint,
    parse_dtype,
    parse_dtype_code,
    reader,
    torch_dtype_of,
    write_tensors,
)
from layerswap.testing import make_lora_adapter, make_tiny_model


def test_importing_the_core_imports_neither_torch_nor_pandas():
    """``layerswap swap`` reads headers and copies bytes: torch (~2 s) and pandas load only where tensors or tables are built."""
    code = "import sys, layerswap.io; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_listing_reads_no_tensor_data(tiny_llama, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read while listing")

    monkeypatch.setattr(reader, "_read_bytes", forbidden)
    monkeypatch.setattr(reader, "mapped_tensor", forbidden)
    folder = ModelFolder(tiny_llama)
    names = folder.names()
    assert "model.layers.0.self_attn.q_proj.weight" in names
    info = folder.info("model.embed_tokens.weight")
    assert info.dtype == "F32" and len(info.shape) == 2
    assert folder.num_parameters > 0 and folder.num_layers == 6


def test_get_matches_safetensors(tiny_llama):
    from safetensors.torch import load_file

    folder = ModelFolder(tiny_llama)
    ref = load_file(str(tiny_llama / "model.safetensors"))
    for name in folder.names():
        assert torch.equal(folder.get(name), ref[name])
    assert folder.get(folder.names()[0], torch.float64).dtype == torch.float64


def test_read_span_is_a_slice_of_the_tensor(tmp_path, tiny_tokenizer):
    """Chunks read from the file (streamed merges) equal the whole read's slices, converted or not; a span
    outside the tensor is refused and a file truncated under it says so in one line."""
    from layerswap.io.reader import read_span

    folder = ModelFolder(make_tiny_model(tmp_path / "m", "llama", dtype=torch.bfloat16, tokenizer=tiny_tokenizer))
    name = max(folder.names(), key=lambda n: folder.info(n).numel)
    info = folder.info(name)
    whole = folder.get(name).reshape(-1)
    for a, b in [(0, info.numel), (7, 4099), (info.numel - 3, info.numel), (5, 5)]:
        assert torch.equal(read_span(info, a, b), whole[a:b])
        assert torch.equal(read_span(info, a, b, torch.float32), whole[a:b].float())
    with pytest.raises(ValueError, match="outside tensor"):
        read_span(info, 0, info.numel + 1)
    shard = shutil.copytree(folder.path, tmp_path / "cut")
    target = next(shard.glob("*.safetensors"))
    cut_info = ModelFolder(shard).info(name)
    with open(target, "r+b") as fh:
        fh.truncate(cut_info.offset + 10)
    with pytest.raises(CheckpointError, match="truncated"):
        read_span(cut_info, 0, cut_info.numel, torch.float32)


def test_dtype_codes_without_torch():
    assert parse_dtype_code("bf16") == "BF16" and parse_dtype_code("F32") == "F32"
    assert parse_dtype_code(torch.float16) == "F16" and dtype_code(torch.bfloat16) == "BF16"
    assert parse_dtype("fp16") is torch.float16 and torch_dtype_of("F8_E4M3") is torch.float8_e4m3fn
    assert all(torch_dtype_of(c).itemsize == size for c, size in DTYPE_SIZES.items())
    with pytest.raises(ConfigError, match="unknown dtype 'float33': use one of"):
        parse_dtype_code("float33")
    with pytest.raises(ConfigError, match="cannot be stored"):
        dtype_code(torch.complex64)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_delta_equals_merge_and_unload(tmp_path, tiny_llama, use_rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = make_lora_adapter(
        tiny_llama,
        tmp_path / "lora",
        layers=[1, 3],
        target_modules=["q_proj", "down_proj"],
        r=4,
        alpha=16,
        use_rslora=use_rslora,
        seed=7,
    )
    adapter = LoraAdapter(adapter_dir)
    base = ModelFolder(tiny_llama)
    merged = (
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter_dir).merge_and_unload().state_dict()
    )
    assert sorted(adapter.modules) == sorted(
        f"model.layers.{layer}.{m}.weight" for layer in (1, 3) for m in ("self_attn.q_proj", "mlp.down_proj")
    )
    view = DeltaView(adapter, base)
    for name in base.names():
        expected = merged[name] - base.get(name)
        d = view.delta(name)
        if name in adapter.modules:
            assert torch.allclose(d, expected, atol=1e-6), name
            assert expected.abs().max() > 0
        else:
            assert d is None and expected.abs().max() == 0


def test_lora_modules_to_save_is_a_replacement(tmp_path, tiny_llama):
    adapter_dir = make_lora_adapter(tiny_llama, tmp_path / "lora", layers=[0], modules_to_save=["lm_head"], seed=1)
    adapter = LoraAdapter(adapter_dir)
    assert "lm_head.weight" in adapter.replacements
    base = ModelFolder(tiny_llama)
    d = DeltaView(adapter, base).delta("lm_head.weight")
    assert d is not None and d.abs().max() > 0


def test_lora_for_another_base_is_refused(tmp_path, tiny_lora, tiny_tokenizer):
    other = make_tiny_model(tmp_path / "wider", "llama", layers=6, hidden=48, tokenizer=tiny_tokenizer)
    with pytest.raises(IncompatibleModelsError, match="another base"):
        DeltaView(open_checkpoint(tiny_lora), ModelFolder(other))


def test_experts_with_different_layer_counts(tiny_llama, tiny_qwen2):
    with pytest.raises(IncompatibleModelsError, match="same base"):
        DeltaView(ModelFolder(tiny_qwen2), ModelFolder(tiny_llama))


def test_missing_and_non_model_paths(tmp_path):
    with pytest.raises(InputPathError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputPathError, match="not a model folder"):
        open_checkpoint(tmp_path / "empty")


def test_pickles_are_refused(tmp_path, tiny_llama):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="never unpickles"):
        ModelFolder(folder)


@pytest.mark.parametrize("damage", ["zero", "truncated", "header"])
def test_damaged_safetensors(copy_model, tiny_llama, damage):
    folder = copy_model(tiny_llama)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    if damage == "zero":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match=str(path.name)):
        ModelFolder(folder)


def test_index_naming_a_missing_shard(tmp_path, tiny_llama):
    out = write_tensors(tmp_path / "sharded", ModelFolder(tiny_llama).iter_tensors(), max_shard_size=20_000, donor=tiny_llama)
    victim = sorted(out.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        ModelFolder(out)


def test_unknown_architecture_warns_and_uses_generic_rule(copy_model, tiny_llama):
    folder = copy_model(tiny_llama)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "brandnew"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="generic"):
        m = ModelFolder(folder)
    assert m.architecture.classify("model.layers.2.mlp.up_proj.weight").layer == 2


def test_reads_map_only_while_reading_and_match_safetensors(tmp_path):
    """``get`` and ``read_tensor_into`` convert straight from a map of the tensor's own bytes, which is gone afterwards."""
    from safetensors.torch import save_file

    tensors = {
        "bf16": torch.randn(300, 7).bfloat16(),
        "f16": torch.randn(5000).half(),
        "f32": torch.randn(3, 3),
        "empty": torch.zeros(0, 4),
        "one": torch.ones(1, dtype=torch.bfloat16),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    infos, _ = reader.read_safetensors_header(path)
    for name, ref in tensors.items():
        got = reader.read_tensor(infos[name])
        assert got.dtype == ref.dtype and torch.equal(got, ref)
        assert torch.equal(reader.read_tensor(infos[name], torch.float32), ref.float())
        buf = torch.full((ref.numel() + 3,), 7.0)
        assert torch.equal(reader.read_tensor_into(infos[name], buf), ref.float())
        got[...] = 0 if got.numel() else got  # a private copy: writable, and the file is untouched
    maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
    assert str(path) not in maps
    assert torch.equal(reader.read_tensor(infos["bf16"]), tensors["bf16"])


def test_file_truncated_after_opening_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"a": torch.randn(4096), "b": torch.randn(4096)}, str(path))
    infos, _ = reader.read_safetensors_header(path)
    with open(path, "r+b") as f:
        f.truncate(infos["b"].offset + 8)
    with pytest.raises(CheckpointError, match="truncated"):
        reader.read_tensor(infos["b"])
    assert torch.equal(reader.read_tensor(infos["a"]).view(-1)[:4], reader.read_tensor(infos["a"]).view(-1)[:4])
