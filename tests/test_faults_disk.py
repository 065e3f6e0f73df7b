"""Disk full and safety.

Disk full: a write that fails with ENOSPC (simulated in the writer's system calls, or at ``open``
for the table/figure writers) ends in one line with exit code 9 and removes the temporary folder;
nothing appears at the output path.

Safety: no code path unpickles a file or runs a model folder's own Python code. Behavioural tests
use a pickle whose loading would create a marker file, and a model folder whose ``auto_map`` points
to a module that creates a marker file when imported; a source scan backs them up.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerswap.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "layerswap"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:  # noqa: ANN001
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return (exc.value.code if isinstance(exc.value.code, int) else 1), err


def error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def nothing_at(out: Path) -> None:
    assert not out.exists()
    stray = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") or p.name.startswith(f"..{out.name}.")]
    assert not stray, f"temporary folders left: {stray}"


# --------------------------------------------------------------------------------------------
# ENOSPC
# --------------------------------------------------------------------------------------------


def _enospc(*_a, **_k):  # noqa: ANN002, ANN003
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_after(monkeypatch, name: str, n: int) -> None:  # noqa: ANN001
    """``os.<name>`` works ``n`` times, then fails with ENOSPC (as a full disk would)."""
    real = getattr(os, name)
    calls = {"n": 0}

    def flaky(*a, **k):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] > n:
            _enospc()
        return real(*a, **k)

    monkeypatch.setattr(os, name, flaky)


def fail_open_for_write_under(monkeypatch, folder: Path, n: int = 0) -> None:  # noqa: ANN001
    """Opening a file for writing under ``folder`` fails with ENOSPC after ``n`` successes."""
    real = io.open
    calls = {"n": 0}

    def flaky(file, mode="r", *a, **k):  # noqa: ANN001, ANN002, ANN003
        if not isinstance(file, int) and any(c in str(k.get("mode", mode)) for c in "wax+"):
            if str(os.path.abspath(os.fspath(file))).startswith(str(folder)):
                calls["n"] += 1
                if calls["n"] > n:
                    _enospc()
        return real(file, mode, *a, **k)

    monkeypatch.setattr(io, "open", flaky)
    monkeypatch.setattr(builtins, "open", flaky)


@pytest.mark.parametrize(
    ("call", "after", "extra"),
    [
        ("pwrite", 3, ["--transition", "1"]),  # a computed (blended) tensor
        ("copy_file_range", 1, []),  # a raw byte copy (back-to-back tensors go in one call)
        ("fsync", 0, []),  # the flush before the rename
        ("write", 0, []),  # a shard header
    ],
)
def test_merge_disk_full(call, after, extra, tiny_experts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "merged"
    fail_after(monkeypatch, call, after)
    argv = ["swap", "--math", str(tiny_experts["math"]), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(out), *extra]
    code, err = run_cli(argv, capsys)
    line = error_line(err)
    assert code == EXIT_CODES["WriteFailedError"]
    assert "no space left on device" in line.lower() and "nothing was written" in line
    nothing_at(out)


def test_merge_on_a_disk_too_small_fails_before_copying(tiny_experts, tmp_path, capsys, monkeypatch):
    """Shards are allocated up front (``fallocate``): a full disk is found before any tensor moves."""
    import ctypes

    from layerswap.io import syscalls as ck

    if not ck._libc("fallocate"):
        pytest.skip("no fallocate on this platform: the shard is only extended, and ENOSPC comes with the copy")

    def no_space(fd, mode, offset, length):  # noqa: ANN001, ANN202
        ctypes.set_errno(errno.ENOSPC)
        return -1

    copies = []
    real_copy = os.copy_file_range
    monkeypatch.setitem(ck._libc_functions, "fallocate", no_space)
    monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: copies.append(a) or real_copy(*a, **k))
    out = tmp_path / "merged"
    argv = ["swap", "--math", str(tiny_experts["math"]), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(out)]
    code, err = run_cli(argv, capsys)
    assert code == EXIT_CODES["WriteFailedError"]
    assert "no space left on device" in error_line(err).lower()
    assert copies == []
    nothing_at(out)


def test_analysis_disk_full(tiny_experts, tmp_path, capsys, monkeypatch):
    out = tmp_path / "analysis"
    fail_open_for_write_under(monkeypatch, tmp_path, n=2)
    argv = ["analyze", "--base", str(tiny_experts["base"]), "--expert", f"math={tiny_experts['math']}", "--expert", f"lang={tiny_experts['lang']}", "--out", str(out)]
    code, err = run_cli(argv, capsys)
    line = error_line(err)
    assert code == EXIT_CODES["WriteFailedError"], line
    assert "no space left on device" in line.lower()
    nothing_at(out)


def test_finetune_final_save_disk_full(tiny_experts, tmp_path, capsys, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}) + "\n" for i in range(8)))
    out = tmp_path / "expert"
    fail_after(monkeypatch, "pwrite", 2)
    argv = [
        "finetune", "--base", str(tiny_experts["base"]), "--data", f"{data}?prompt=prompt,completion=completion",
        "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--train-layers", "1-2", "--quiet", "--out", str(out),
    ]  # fmt: skip
    code, err = run_cli(argv, capsys)
    line = error_line(err)
    assert code == EXIT_CODES["WriteFailedError"], line
    assert "no space left on device" in line.lower()
    nothing_at(out)


# --------------------------------------------------------------------------------------------
# The environment failing: standard output on a full device, too few file descriptors
# --------------------------------------------------------------------------------------------


def _layerswap(args: list[str], *, stdout=None, prelude: str = "") -> subprocess.CompletedProcess:  # noqa: ANN001
    code = f"import sys{prelude}\nfrom layerswap.cli import main\nmain(sys.argv[1:])"
    env = {**os.environ, "LAYERSWAP_QUIET": "1"}
    env.pop("LAYERSWAP_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, timeout=300)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stdout_on_a_full_device_is_one_line(tiny_experts):
    with open("/dev/full", "w") as full:
        done = _layerswap(["inspect", str(tiny_experts["math"])], stdout=full)
    assert done.returncode == EXIT_CODES["WriteFailedError"], done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert error_line(done.stderr).endswith("free space or write elsewhere, then rerun the command")


def test_too_few_file_descriptors_while_writing_shards(tiny_experts, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: linear\nexperts: {{a: {tiny_experts['math']}, b: {tiny_experts['lang']}}}\nmax_shard_size: 2000\n")
    limit = "\nimport resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (24, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))"
    out = tmp_path / "merged"
    done = _layerswap(["merge", str(cfg), "--out", str(out)], prelude="\nimport layerswap.merge, torch, safetensors" + limit)
    assert done.returncode == EXIT_CODES["WriteFailedError"], done.stderr
    assert "too many open files" in error_line(done.stderr)
    nothing_at(out)


# --------------------------------------------------------------------------------------------
# Never unpickle
# --------------------------------------------------------------------------------------------


class _Boom:
    """Unpickling this object runs ``open(marker, 'w')``: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (builtins.open, (self.marker, "w"))


@pytest.fixture()
def pickled_model(tiny_llama, tmp_path) -> tuple[Path, Path]:
    """A model folder whose only weights are a malicious ``pytorch_model.bin``."""
    marker = tmp_path / "UNPICKLED"
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_llama / name).exists():
            shutil.copy(tiny_llama / name, folder / name)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    return folder, marker


def test_pickled_weights_are_refused_everywhere(pickled_model, tiny_experts, tmp_path, capsys, monkeypatch):
    import torch

    folder, marker = pickled_model
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or _enospc())
    out = tmp_path / "out"
    commands = [
        ["inspect", str(folder)],
        ["swap", "--math", str(folder), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(out)],
        ["analyze", "--base", str(tiny_experts["base"]), "--expert", f"math={folder}", "--expert", f"lang={tiny_experts['lang']}", "--out", str(out)],
        ["evaluate", str(folder), "--task", "custom", "--data", str(_qa(tmp_path)), "--langs", "en", "--limit", "1", "--max-new-tokens", "2", "--out", str(out)],
    ]
    for argv in commands:
        code, err = run_cli(argv, capsys)
        line = error_line(err)
        assert code == EXIT_CODES["CheckpointError"], f"{argv[0]}: {line}"
        assert "never unpickles" in line
        nothing_at(out)
    assert not marker.exists(), "a pickle was loaded"
    assert not any(k.get("weights_only") is not True for k in calls), "torch.load without weights_only=True"


def test_pickled_adapter_is_refused(tiny_lora, tiny_experts, tmp_path, capsys):
    marker = tmp_path / "UNPICKLED"
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_lora, adapter)
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    for argv in (
        ["inspect", str(adapter)],
        ["swap", "--math", str(adapter), "--lang", str(tiny_lora), "--base", str(tiny_experts["base"]), "--bottom", "1", "--top", "1", "--out", str(tmp_path / "o")],
    ):
        code, err = run_cli(argv, capsys)
        assert code == EXIT_CODES["CheckpointError"] and "never unpickles" in error_line(err)
    assert not marker.exists()


def _qa(tmp: Path) -> Path:
    path = tmp / "qa.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Never run a model folder's own code
# --------------------------------------------------------------------------------------------

_EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "llama"
class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
'''


@pytest.fixture()
def remote_code_model(tiny_llama, tmp_path) -> tuple[Path, Path]:
    """A working tiny Llama whose config asks (via ``auto_map``) to import its own ``evil.py``."""
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = tmp_path / "custom-code"
    shutil.copytree(tiny_llama, folder)
    (folder / "evil.py").write_text(_EVIL.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder, marker


def test_custom_code_is_never_run(remote_code_model, tiny_experts, tmp_path, capsys):
    folder, marker = remote_code_model
    from layerswap.evaluate.runner import load_model

    loaded = load_model(str(folder), device="cpu")  # the library default: trust_remote_code=False
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    out = tmp_path / "eval"
    from layerswap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(folder), "--task", "custom", "--data", str(_qa(tmp_path)), "--langs", "en", "--limit", "1", "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert exc.value.code == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["swap", "--math", str(folder), "--lang", str(tiny_experts["lang"]), "--bottom", "1", "--top", "1", "--out", str(tmp_path / "m")])
    assert exc.value.code == 0, capsys.readouterr().err  # the merge ran to the end: the marker's absence means something
    assert not marker.exists(), "a model folder's own Python code was imported"


def test_unknown_custom_architecture_is_refused_not_run(remote_code_model, tmp_path, capsys):
    folder, marker = remote_code_model
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(["evaluate", str(folder), "--task", "custom", "--data", str(_qa(tmp_path)), "--langs", "en", "--limit", "1", "--out", str(tmp_path / "e")], capsys)
    line = error_line(err)
    assert code != 0 and "trust" in line.lower()
    assert not marker.exists()


def test_finetune_resume_unpickles_nothing(tiny_llama, qa_file, tmp_path, monkeypatch):
    """A checkpoint layerswap wrote holds its optimizer, scheduler and RNG state in safetensors and JSON:
    pickles planted beside them (as the Trainer would name them) are never loaded, torch.load is never
    called, and the resumed run still equals an uninterrupted one."""
    import torch
    from transformers import TrainerCallback

    from layerswap.finetune import FinetuneConfig, finetune
    from layerswap.io import ModelFolder, read_provenance

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            if state.global_step == 3:
                raise KeyboardInterrupt

    out = tmp_path / "res"
    config = FinetuneConfig(base=str(tiny_llama), data=[str(qa_file)], out=str(out), steps=5, save_steps=2, batch_size=4,
                            seq_len=48, lr=3e-3, quiet=True, train_layers="0-2")  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        finetune(config, callbacks=[Crash()])
    ckpt = tmp_path / "res.work" / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state.safetensors", "rng_state.json"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}, names
    marker = tmp_path / "UNPICKLED"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"):
        (ckpt / name).write_bytes(pickle.dumps(_Boom(marker)))
    calls = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or _enospc())
    finetune(config, resume=True)
    assert not marker.exists() and not calls, "a pickle was loaded on resume"
    monkeypatch.undo()
    assert read_provenance(out)["resumed_from_step"] == 2
    straight = finetune(config.model_copy(update={"out": str(tmp_path / "straight")}))
    a, b = ModelFolder(out), ModelFolder(straight)
    for name in a.names():
        torch.testing.assert_close(a.get(name), b.get(name), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Source scan: the behavioural tests above, backed by what the code can do at all
# --------------------------------------------------------------------------------------------


def _sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))]


def test_source_never_unpickles_or_trusts_remote_code():
    sources = _sources()
    assert len(sources) >= 30 and any("load_model" in text for _, text in sources), f"the scan found only {len(sources)} files"
    problems = []
    for path, text in sources:
        rel = path.relative_to(ROOT)
        for m in re.finditer(r"torch\.load\((?P<args>[^()]*(?:\([^()]*\)[^()]*)*)\)", text):
            if "weights_only=True" not in m.group("args"):
                problems.append(f"{rel}: torch.load without weights_only=True")
        for pattern in (r"\bpickle\.loads?\(", r"\bdill\.", r"\bcloudpickle\.", r"\bjoblib\.load\(", r"np\.load\([^)]*allow_pickle\s*=\s*True", r"\byaml\.load\(", r"(?<![.\w])eval\(", r"(?<![.\w])exec\("):
            if re.search(pattern, text):
                problems.append(f"{rel}: {pattern}")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            problems.append(f"{rel}: trust_remote_code=True")
        for m in re.finditer(r"trust_remote_code\s*:\s*bool\s*=\s*(\w+)", text):
            if m.group(1) != "False":
                problems.append(f"{rel}: trust_remote_code defaults to {m.group(1)}")
    assert not problems, "\n".join(problems)
