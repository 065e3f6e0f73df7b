"""Unit tests of the input checks behind tests/faults_inputs.py: the raw copy's NaN/Inf test, sizes,
duplicate YAML keys, plain names, repeated options, data files and fine-tuning numbers."""

from __future__ import annotations

import os

import pytest
import torch

from layerswap.config import check_name, read_yaml
from layerswap.errors import ConfigError, DataError, InputPathError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nonfinite_found_in_every_float_dtype(tmp_path, dtype):
    from layerswap.io.finite import has_nonfinite

    code = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}[dtype]
    info = torch.finfo(dtype)
    finite = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny, info.tiny / 4, 1.0, -3.5], dtype=dtype)
    path = tmp_path / "t.bin"
    pad = b"\x01" * 8  # the tensor starts at an offset, as in a safetensors file
    path.write_bytes(pad + finite.view(torch.uint8).numpy().tobytes())
    assert not has_nonfinite(path, 8, finite.numel() * finite.element_size(), code)
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = finite.clone()
        t[5] = bad
        path.write_bytes(pad + t.view(torch.uint8).numpy().tobytes())
        assert has_nonfinite(path, 8, t.numel() * t.element_size(), code), (code, bad)
    assert not has_nonfinite(path, 8, 4, "I32")  # integers are never tested


def test_finite_check_names_the_first_bad_tensor(tmp_path):
    from layerswap.io.finite import FiniteCheck

    good = torch.ones(1000).numpy().tobytes()
    bad = torch.tensor([1.0, float("nan")]).numpy().tobytes()
    path = tmp_path / "w.bin"
    path.write_bytes(good + bad)
    check = FiniteCheck()
    check.submit("good", path, 0, len(good), "F32")
    check.submit("bad", path, len(good), len(bad), "F32")
    assert check.result() == ("bad", path)
    clean = FiniteCheck()
    clean.submit("good", path, 0, len(good), "F32")
    assert clean.result() is None


def test_parse_size():
    from layerswap.io import parse_size

    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("1.5MiB") == int(1.5 * 2**20)
    assert parse_size(".5KB") == 500
    assert parse_size(1000) == 1000
    for bad in ("1.2.3GB", "GB", "", "-1GB", "0", 0, -5, True, 1.5):
        with pytest.raises(ConfigError):
            parse_size(bad)  # type: ignore[arg-type]


def test_duplicate_yaml_keys_refused_but_merge_keys_may_override(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("a: 1\nb:\n  c: 1\n  c: 2\n")
    with pytest.raises(ConfigError, match=r"key 'c' is given twice \(on lines 3 and 4\)"):
        read_yaml(dup)
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text("base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 3\n")
    assert read_yaml(anchors) == {"base": {"x": 1, "y": 2}, "child": {"x": 1, "y": 3}}
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InputPathError, match="not a regular file"):
        read_yaml(fifo)  # refused before any open: never blocks


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "a\\b", "", ".hidden", "x" * 65, "a b", 3])
def test_check_name_refuses(name):
    with pytest.raises(ConfigError):
        check_name(name, "label")


@pytest.mark.parametrize("name", ["math", "lang", "sw", "zho_Hans", "expert-2", "v1.5", "a+b"])
def test_check_name_accepts(name):
    assert check_name(name, "label") == name


def test_repeated_options():
    import typer

    from layerswap.cli import app, refuse_repeated_options

    cmd = typer.main.get_command(app)
    refuse_repeated_options(cmd, ["analyze", "--base", "b", "--expert", "a=x", "--expert", "b=y", "--out", "o"])
    refuse_repeated_options(cmd, ["evaluate", "m", "--task", "--task"])  # the second --task is the first one's value
    refuse_repeated_options(cmd, ["swap", "--out", "o", "--", "--out", "p"])
    refuse_repeated_options(cmd, ["nosuchcommand", "--x", "1", "--x", "2"])  # click reports it
    with pytest.raises(ConfigError, match="--task proxy,mgsm"):
        refuse_repeated_options(cmd, ["evaluate", "m", "--task=proxy", "--task", "mgsm"])
    with pytest.raises(ConfigError, match="--force is given twice"):
        refuse_repeated_options(cmd, ["models", "prepare", "x", "--force", "--force"])


def test_data_files(tmp_path):
    from layerswap.io import iter_jsonl, iter_tsv, read_lines

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [r for _, r in iter_jsonl(bom)] == [{"a": 1}, {"a": 2}]
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("q\ta\nok\t1\ncaf\xe9\t2\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 3 is not UTF-8"):
        list(iter_tsv(latin))
    rows = tmp_path / "rows.tsv"
    rows.write_text('q\ta\n"quoted" x\t1\r\n', encoding="utf-8")
    assert list(iter_tsv(rows)) == [(2, {"q": '"quoted" x', "a": "1"})]
    with pytest.raises(InputPathError, match="is a folder"):
        read_lines(tmp_path)
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(InputPathError, match="not a regular file"):
        read_lines(fifo)  # refused before any open: never blocks


@pytest.mark.parametrize(
    "key,value", [("lr", float("nan")), ("lr", 0.0), ("epochs", float("inf")), ("weight_decay", -0.1), ("lora_dropout", 1.0), ("lora_alpha", float("nan"))]
)
def test_finetune_numbers(key, value):
    from layerswap.config import validate_config
    from layerswap.finetune.config import FinetuneConfig

    with pytest.raises(ConfigError, match="out of range"):
        validate_config(FinetuneConfig, {"base": "b", "data": ["d.jsonl"], "out": "o", key: value})
