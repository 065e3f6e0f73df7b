"""Foundation: lazy listing, sharded roundtrip, LoRA deltas, atomic writer, refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from layerswap import checkpoint as ck
from layerswap.checkpoint import (
    DeltaView,
    LoraAdapter,
    ModelFolder,
    ShardedWriter,
    TensorSpec,
    open_checkpoint,
    read_safetensors_header,
    write_tensors,
)
from layerswap.errors import CheckpointError, IncompatibleModelsError, InputPathError, OutputExistsError, WriteFailedError
from layerswap.testing import make_lora_adapter


def test_listing_reads_no_tensor_data(tiny_llama, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read while listing")

    monkeypatch.setattr(ck, "_read_bytes", forbidden)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sharded_roundtrip_is_bit_exact(tmp_path, tiny_llama, dtype):
    src = ModelFolder(tiny_llama)
    tensors = {n: t.to(dtype) for n, t in src.iter_tensors()}
    out = write_tensors(tmp_path / "out", tensors, max_shard_size=20_000, donor=tiny_llama, provenance={"kind": "test"})
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists() and (out / "layerswap.json").exists()
    back = ModelFolder(out)
    assert back.names() == list(tensors)
    for name, t in tensors.items():
        assert torch.equal(back.get(name).view(torch.uint8), t.contiguous().view(torch.uint8)) if t.dim() else torch.equal(back.get(name), t)


def test_written_folder_loads_in_transformers(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    src = ModelFolder(tiny_llama)
    out = write_tensors(tmp_path / "out", src.iter_tensors(), max_shard_size=50_000, donor=tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, p in model.state_dict().items():
        if name in src:
            assert torch.equal(p, src.get(name))


def test_copy_raw_is_bit_exact(tmp_path, tiny_llama):
    src = ModelFolder(tiny_llama)
    specs = [TensorSpec(n, src.info(n).dtype, src.info(n).shape) for n in src.names()]
    with ShardedWriter(tmp_path / "raw", specs, max_shard_size=30_000, donor=tiny_llama) as w:
        for n in reversed(src.names()):  # any order: offsets are planned
            w.copy_raw(n, src.info(n))
    back = ModelFolder(tmp_path / "raw")
    for n in src.names():
        assert torch.equal(back.get(n), src.get(n))


def test_copy_raw_joins_back_to_back_tensors(tmp_path, tiny_llama, monkeypatch):
    """Tensors adjacent in both source and output go in one kernel call; the bytes stay exact."""
    src = ModelFolder(tiny_llama)
    infos = sorted((src.info(n) for n in src.names()), key=lambda i: (str(i.file), i.offset))
    specs = [TensorSpec(i.name, i.dtype, i.shape) for i in infos]
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    with ShardedWriter(tmp_path / "raw", specs, donor=tiny_llama) as w:
        for i in infos:
            w.copy_raw(i.name, i)
    assert len(calls) == len({i.file for i in infos}) < len(infos)
    back = ModelFolder(tmp_path / "raw")
    for n in src.names():
        assert torch.equal(back.get(n), src.get(n))


def test_copy_raw_without_kernel_copies(tmp_path, tiny_llama, monkeypatch):
    """Where neither copy_file_range nor file-to-file sendfile exists (macOS), bytes go by pread/pwrite."""
    import errno

    def sockets_only(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOTSOCK, "Socket operation on non-socket")

    monkeypatch.delattr(os, "copy_file_range", raising=False)
    monkeypatch.setattr(os, "sendfile", sockets_only)
    src = ModelFolder(tiny_llama)
    specs = [TensorSpec(n, src.info(n).dtype, src.info(n).shape) for n in src.names()]
    with ShardedWriter(tmp_path / "raw", specs, donor=tiny_llama) as w:
        for n in src.names():
            w.copy_raw(n, src.info(n))
    back = ModelFolder(tmp_path / "raw")
    assert all(torch.equal(back.get(n), src.get(n)) for n in src.names())


def test_copy_raw_of_a_file_cut_short_names_the_tensor(tmp_path, tiny_llama):
    src = ModelFolder(tiny_llama)
    names = src.names()
    shutil.copytree(tiny_llama, tmp_path / "cut")
    cut = ModelFolder(tmp_path / "cut")
    info = cut.info(names[-1])
    os.truncate(info.file, info.offset + 4)  # after the header was read: the tensor's bytes are gone
    specs = [TensorSpec(n, cut.info(n).dtype, cut.info(n).shape) for n in names]
    with pytest.raises(CheckpointError, match="truncated"):
        with ShardedWriter(tmp_path / "out", specs) as w:
            for n in names:
                w.copy_raw(n, cut.info(n))
    assert not (tmp_path / "out").exists()


def test_a_failed_copy_is_never_committed_even_if_the_error_is_swallowed(tmp_path, tiny_llama):
    shutil.copytree(tiny_llama, tmp_path / "cut")
    cut = ModelFolder(tmp_path / "cut")
    names = sorted(cut.names(), key=lambda n: cut.info(n).offset)
    last = cut.info(names[-1])
    os.truncate(last.file, last.offset + 4)
    specs = [TensorSpec(n, cut.info(n).dtype, cut.info(n).shape) for n in names]
    with pytest.raises(RuntimeError, match="nothing was written"):
        with ShardedWriter(tmp_path / "out", specs, donor=tiny_llama) as w:
            w.copy_raw(names[-1], last)
            with pytest.raises(CheckpointError, match="truncated"):
                w.copy_raw(names[0], cut.info(names[0]))  # not adjacent: the cut tensor's run is copied now
            for n in names[1:-1]:
                w.copy_raw(n, cut.info(n))
    assert not (tmp_path / "out").exists()


def test_dtype_codes_without_torch():
    assert ck.parse_dtype_code("bf16") == "BF16" and ck.parse_dtype_code("F32") == "F32"
    assert ck.parse_dtype_code(torch.float16) == "F16" and ck.dtype_code(torch.bfloat16) == "BF16"
    assert ck.parse_dtype("fp16") is torch.float16 and ck.torch_dtype_of("F8_E4M3") is torch.float8_e4m3fn
    assert all(ck.torch_dtype_of(c).itemsize == size for c, size in ck.DTYPE_SIZES.items())
    with pytest.raises(ck.ConfigError, match="unknown dtype 'float33': use one of"):
        ck.parse_dtype_code("float33")
    with pytest.raises(ck.ConfigError, match="cannot be stored"):
        ck.dtype_code(torch.complex64)


def test_writer_refuses_existing_output(tmp_path, tiny_llama):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_tensors(out, {"a": torch.zeros(2)})
    write_tensors(out, {"a": torch.ones(2)}, overwrite=True)
    infos, _ = read_safetensors_header(out / "model.safetensors")
    assert torch.equal(ck.read_tensor(infos["a"]), torch.ones(2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writer_leaves_nothing_when_it_fails_midway(tmp_path):
    out = tmp_path / "partial"

    def tensors():
        yield "a", torch.zeros(4)
        raise RuntimeError("boom")

    specs = [TensorSpec("a", "F32", (4,)), TensorSpec("b", "F32", (4,))]
    with pytest.raises(RuntimeError, match="boom"):
        with ShardedWriter(out, specs) as w:
            for name, t in tensors():
                w.write(name, t)
    assert list(tmp_path.iterdir()) == []


def test_writer_reports_disk_full_and_cleans_up(tmp_path, monkeypatch):
    import errno as errno_mod

    real_pwrite = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno_mod.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.os, "pwrite", full)
    with pytest.raises(WriteFailedError, match="No space left"):
        write_tensors(tmp_path / "o", {"a": torch.ones(8)})
    monkeypatch.setattr(ck.os, "pwrite", real_pwrite)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_incomplete_plan(tmp_path):
    with pytest.raises(RuntimeError, match="never written"):
        with ShardedWriter(tmp_path / "o", [TensorSpec("a", "F32", (2,)), TensorSpec("b", "F32", (2,))]) as w:
            w.write("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_delta_equals_merge_and_unload(tmp_path, tiny_llama, use_rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = make_lora_adapter(tiny_llama, tmp_path / "lora", layers=[1, 3], target_modules=["q_proj", "down_proj"], r=4, alpha=16, use_rslora=use_rslora, seed=7)
    adapter = LoraAdapter(adapter_dir)
    base = ModelFolder(tiny_llama)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), adapter_dir).merge_and_unload().state_dict()
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
    from layerswap.testing import make_tiny_model

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


def test_output_dir_parent_is_created(tmp_path):
    out = write_tensors(tmp_path / "a" / "b" / "c", {"x": torch.zeros(1)})
    assert Path(out).exists()


def test_leftovers_of_a_killed_writer_are_recovered(tmp_path):
    """A dead writer's temporary folder is removed; a previous output it moved aside comes back."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "model"
    (tmp_path / f".model.tmp-{dead.pid}-0123abcd").mkdir()
    old = tmp_path / f".model.old-{dead.pid}-89abcdef"
    old.mkdir()
    (old / "marker").write_text("previous")
    with pytest.raises(OutputExistsError):
        write_tensors(out, {"a": torch.zeros(1)})
    assert (out / "marker").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    mine = tmp_path / f".model.tmp-{os.getpid()}-0123abcd"
    mine.mkdir()
    write_tensors(out, {"a": torch.zeros(1)}, overwrite=True)
    assert mine.exists()  # a live writer's folder is never touched
