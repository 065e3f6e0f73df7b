"""``benchmarks/gpu_check.py --dry-run``: the GPU check runs end to end at tiny sizes on the CPU.

The real check needs CUDA (and refuses to start without it); the dry run takes every part through
the same code (synthetic model, full and LoRA fine-tuning through the recipe, the in-memory swap
with its bit-for-bit check, batched generation) so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_dry_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "gpu_check.md"
    code = _script().main(["--dry-run", "--work", str(tmp_path / "work"), "--out", str(out)])
    text = out.read_text()
    assert code == 0, text
    assert "all parts passed" in text and "FAILED" not in text
    for title in (
        "Environment",
        "Synthetic model",
        "Fine-tuning: full",
        "Fine-tuning: LoRA",
        "In-memory layer swap",
        "Batched MGSM-style generation",
    ):
        assert f"## {title}" in text, title
    assert "| full | 2-3 |" in text and "| lora | 2-3 |" in text
    assert "checked, bit for bit" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for minutes")
def test_without_cuda_it_refuses_to_start(tmp_path, capsys):
    code = _script().main(["--out", str(tmp_path / "x.md")])
    assert code == 2 and not (tmp_path / "x.md").exists()
    assert "no CUDA device" in capsys.readouterr().err
