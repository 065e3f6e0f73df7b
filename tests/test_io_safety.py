"""Model folders are closed (issue 14): a file outside the folder is never opened, only regular files
are, no message quotes a file's bytes, Hugging Face cache links keep working, and header validation
stays cheap. The one-line errors themselves are in the catalogue (tests/faults_models.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from faults_catalogue import hook_opens
from faults_models import edit_header, make_hf_cache

from layerswap.errors import CheckpointError, InputPathError
from layerswap.io import ModelFolder, read_safetensors_header


def _record_opens(monkeypatch) -> list[str]:  # noqa: ANN001
    """Every path opened through os.open, io.open, open and os.stat-free Path.open, resolved."""
    opened: list[str] = []

    def note(file: object) -> None:
        if not isinstance(file, int):
            opened.append(os.path.realpath(os.fspath(file)))

    hook_opens(monkeypatch, note)
    return opened


def _run(argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.fixture
def outside(tmp_path, tiny_experts) -> tuple[Path, list[Path]]:
    """A sharded model whose index names files outside its folder, and those files (valid safetensors)."""
    from layerswap.testing import planted_expert

    sharded = planted_expert(tiny_experts["base"], tmp_path / "sharded", layers=[1], max_shard_size=20_000, seed=5)
    secret = tmp_path / "secret"
    secret.mkdir()
    targets = [secret / "model.safetensors", tmp_path / "sibling.safetensors"]
    for t in targets:
        shutil.copy(tiny_experts["math"] / "model.safetensors", t)
    return sharded, targets


@pytest.mark.parametrize("form", ["absolute", "dotdot", "separator"])
def test_a_file_outside_the_folder_is_never_opened(outside, form, tmp_path, tiny_experts, capsys, monkeypatch):
    sharded, targets = outside
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = {
        "absolute": str(targets[0]),
        "dotdot": "../sibling.safetensors",
        "separator": "../secret/model.safetensors",
    }[form]
    index_path.write_text(json.dumps(index))
    opened = _record_opens(monkeypatch)
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    commands = [
        ["inspect", str(sharded)],
        ["swap", "--math", str(sharded), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(tmp_path / "o")],
        ["analyze", "--base", str(tiny_experts["base"]), "--expert", f"math={sharded}", "--expert", f"lang={tiny_experts['lang']}", "--out", str(tmp_path / "a")],
    ]
    for argv in commands:
        code, err = _run(argv, capsys)
        assert code == CheckpointError.exit_code and "outside the folder" in err, err
    assert opened, "the recorder saw no open at all: it is not wired"
    reached = {str(t.resolve()) for t in targets} & set(opened)
    assert not reached, f"opened outside the model folder: {reached}"


def test_hf_cache_links_keep_working(tmp_path, tiny_experts, capsys):
    snap = make_hf_cache(tiny_experts["math"], tmp_path / "hub")
    assert (snap / "model.safetensors").is_symlink()
    folder = ModelFolder(snap)
    assert folder.names() == ModelFolder(tiny_experts["math"]).names()
    code, err = _run(["swap", "--math", str(snap), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err


def test_only_regular_files_are_opened(tmp_path, tiny_experts):
    folder = tmp_path / "m"
    shutil.copytree(tiny_experts["math"], folder)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")  # opening it for reading would block forever
    with pytest.raises(InputPathError, match="FIFO"):
        ModelFolder(folder)


def test_no_message_quotes_file_bytes(tmp_path, tiny_experts):
    folder = tmp_path / "m"
    shutil.copytree(tiny_experts["math"], folder)
    text = b"root:x:0:0:root:/root:/bin/bash\n"
    (folder / "model.safetensors").write_bytes(text)
    with pytest.raises(CheckpointError) as exc:
        ModelFolder(folder)
    message = str(exc.value)
    assert str(int.from_bytes(text[:8], "little")) not in message and "root:x" not in message


def test_a_header_of_ten_thousand_tensors_is_read_whole(tmp_path):
    """10,000 tensors (a large sharded model's worth of entries in one file) are all read and checked
    (how fast is a benchmark's question, not a test's: no wall-clock assertion here)."""
    n = 10_000
    header = {"__metadata__": {"format": "pt"}}
    for i in range(n):
        header[f"model.layers.{i // 10}.mlp.t{i}.weight"] = {"dtype": "F32", "shape": [2, 2], "data_offsets": [16 * i, 16 * i + 16]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "big.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(16 * n))
    infos, meta = read_safetensors_header(path)
    assert len(infos) == n and meta == {"format": "pt"}


def test_header_edit_roundtrip_and_nesting_bound(tmp_path, tiny_experts):
    path = tmp_path / "m.safetensors"
    shutil.copy(tiny_experts["math"] / "model.safetensors", path)
    before, _ = read_safetensors_header(path)
    edit_header(path, lambda h: h)
    after, _ = read_safetensors_header(path)
    assert {k: (v.shape, v.dtype, v.nbytes) for k, v in before.items()} == {k: (v.shape, v.dtype, v.nbytes) for k, v in after.items()}
    edit_header(path, lambda h: json.dumps({**h, "__metadata__": {}}).encode().replace(b'"__metadata__": {}', b'"__metadata__": ' + b"[" * 40 + b"]" * 40))
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_safetensors_header(path)


def test_io_imports_without_torch():
    code = "import sys, layerswap.io, layerswap.io.reader; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_never_unpickles_beside_safetensors(tiny_lora, tiny_experts, tmp_path, monkeypatch):
    """A pickle beside the safetensors weights (model and adapter) never reaches torch.load, ours or the libraries'."""
    import torch

    from layerswap.evaluate.runner import load_model
    from layerswap.io import DeltaView, LoraAdapter, open_model

    base = tmp_path / "base"
    shutil.copytree(tiny_experts["base"], base)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_lora, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    for folder, name in ((base, "pytorch_model.bin"), (adapter, "adapter_model.bin")):
        (folder / name).write_bytes(b"\x80\x04K\x01.")
    calls: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or pytest.fail("torch.load was called"))
    lm = load_model(str(adapter), device="cpu")
    assert not calls
    view = DeltaView(LoraAdapter(adapter), open_model(base))
    state = lm.model.state_dict()
    for name in LoraAdapter(adapter).names():
        torch.testing.assert_close(state[name], view.weight(name), rtol=1e-5, atol=1e-6)


def test_layer_checks_where_a_config_names_layers(tmp_path, tiny_experts):
    folder = tmp_path / "m"
    shutil.copytree(tiny_experts["math"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["num_hidden_layers"]  # GPT-2 writes n_layer: evaluate (transformers loads it) must still accept it
    (folder / "config.json").write_text(json.dumps(cfg))
    assert len(ModelFolder(folder, need_layers=False)) == len(ModelFolder(tiny_experts["math"]))
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        ModelFolder(folder)
    cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"] = 5, 1  # layer 5 is a multi-token-prediction layer
    (folder / "config.json").write_text(json.dumps(cfg))
    assert ModelFolder(folder).num_layers == 5


def test_unlistable_folder_is_one_line(tmp_path, tiny_experts, monkeypatch):
    import errno

    def refuse(path):  # noqa: ANN001, ANN202
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(InputPathError, match="permission denied"):
        ModelFolder(tiny_experts["math"])
