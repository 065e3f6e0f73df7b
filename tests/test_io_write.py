"""The core's writing side: sharded safetensors, raw byte copies, atomic outputs and their recovery."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from layerswap.errors import CheckpointError, OutputExistsError, WriteFailedError
from layerswap.io import (
    ModelFolder,
    ShardedWriter,
    TensorSpec,
    read_safetensors_header,
    read_tensor,
    write_provenance,
    write_tensors,
)


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


def test_writer_refuses_existing_output(tmp_path, tiny_llama):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_tensors(out, {"a": torch.zeros(2)})
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by layerswap"):  # --overwrite replaces only layerswap's own
        write_tensors(out, {"a": torch.zeros(2)}, overwrite=True)
    write_provenance(out, {"kind": "test"})
    write_tensors(out, {"a": torch.ones(2)}, overwrite=True)
    infos, _ = read_safetensors_header(out / "model.safetensors")
    assert torch.equal(read_tensor(infos["a"]), torch.ones(2))
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

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(WriteFailedError, match="No space left"):
        write_tensors(tmp_path / "o", {"a": torch.ones(8)})
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_incomplete_plan(tmp_path):
    with pytest.raises(RuntimeError, match="never written"):
        with ShardedWriter(tmp_path / "o", [TensorSpec("a", "F32", (2,)), TensorSpec("b", "F32", (2,))]) as w:
            w.write("a", torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


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
    write_provenance(old, {"kind": "test"})  # --overwrite replaces only a folder layerswap wrote
    with pytest.raises(OutputExistsError):
        write_tensors(out, {"a": torch.zeros(1)})
    assert (out / "marker").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    mine = tmp_path / f".model.tmp-{os.getpid()}-0123abcd"
    mine.mkdir()
    write_tensors(out, {"a": torch.zeros(1)}, overwrite=True)
    assert mine.exists()  # a live writer's folder is never touched
