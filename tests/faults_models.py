"""Bad model folders and adapters (issue 14, classes 2, 3, 7 and the model parts of 4 and 5).

Model folders are closed (an index may name only plain ``*.safetensors`` files of its own folder),
only regular files are opened (a FIFO or device cannot hang ``inspect``), nothing is unpickled (not
even by transformers or PEFT during ``evaluate``), and headers, adapter configs, LoRA factors and
config layer counts are validated, each in one line. FIFOs and device links are made per case in the
sandbox (``setup``), never under ``env.root``, so nothing that walks the shared inputs can block on them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults_catalogue import Case, Env, _copy

ST = "model.safetensors"
INDEX = "model.safetensors.index.json"


def edit_header(file: Path, edit: Callable[[dict[str, Any]], dict[str, Any] | bytes]) -> None:
    """Rewrite a safetensors header (the data bytes stay); ``edit`` returns the new header or raw JSON bytes."""
    blob = file.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    new = edit(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n :])


def _first_layer_tensor(header: dict[str, Any]) -> str:
    return next(k for k in header if ".layers.3." in k and k.endswith("up_proj.weight"))


def _header_case(env: Env, name: str, edit: Callable[[dict[str, Any]], dict[str, Any] | bytes]) -> None:
    d = _copy(env.math, env.p(name))
    edit_header(d / ST, edit)


def _set(header: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    header[_first_layer_tensor(header)][field] = value
    return header


def _overlap(header: dict[str, Any]) -> dict[str, Any]:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = names[3], names[4]
    size = header[a]["data_offsets"][1] - header[a]["data_offsets"][0]
    if header[b]["data_offsets"][1] - header[b]["data_offsets"][0] == size:
        header[b]["data_offsets"] = list(header[a]["data_offsets"])
    else:  # make b a copy of a's shape at a's offsets
        header[b] = dict(header[a])
    return header


def _index_case(env: Env, name: str, edit: Callable[[dict[str, str]], None]) -> Path:
    d = _copy(env.p("sharded"), env.p(name))
    index = json.loads((d / INDEX).read_text())
    edit(index["weight_map"])
    (d / INDEX).write_text(json.dumps(index))
    return d


def _retarget_first(weight_map: dict[str, str], shard: str) -> None:
    weight_map[next(iter(weight_map))] = shard


def _adapter_case(env: Env, name: str, config: dict[str, Any] | None = None, tensors: Callable[[dict], None] | None = None) -> None:
    d = _copy(env.lora, env.p(name))
    if config is not None:
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(config)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        from safetensors.torch import load_file, save_file

        sd = load_file(d / "adapter_model.safetensors")
        tensors(sd)
        save_file(sd, d / "adapter_model.safetensors")


def _lora_key(sd: dict, part: str) -> str:
    return next(k for k in sd if f"q_proj.{part}" in k)


def _rank_zero(sd: dict) -> None:
    import torch

    a, b = _lora_key(sd, "lora_A"), _lora_key(sd, "lora_B")
    sd[a] = torch.zeros((0, sd[a].shape[1]))
    sd[b] = torch.zeros((sd[b].shape[0], 0))


def _rank_mismatch(sd: dict) -> None:
    b = _lora_key(sd, "lora_B")
    sd[b] = sd[b][:, :2].contiguous()


def _a_1d(sd: dict) -> None:
    a = _lora_key(sd, "lora_A")
    sd[a] = sd[a].flatten().contiguous()


def _a_int8(sd: dict) -> None:
    import torch

    a = _lora_key(sd, "lora_A")
    sd[a] = sd[a].to(torch.int8)


def _config_case(env: Env, name: str, **changes: Any) -> None:
    d = _copy(env.math, env.p(name))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def build(env: Env) -> None:
    """Write the broken model folders and adapters (no FIFOs or device links: those are per case)."""
    # Headers against the format.
    _header_case(env, "hdr-dtype-list", lambda h: _set(h, "dtype", ["F32"]))
    _header_case(env, "hdr-dtype-unknown", lambda h: _set(h, "dtype", "F7"))
    _header_case(env, "hdr-metadata-list", lambda h: {**h, "__metadata__": ["format", "pt"]})
    _header_case(env, "hdr-deep-nesting", lambda h: json.dumps({**h, "__metadata__": {}}).encode().replace(b'"__metadata__": {}', b'"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000))
    _header_case(env, "hdr-negative-shape", lambda h: _set(h, "shape", [-4, -8]))
    _header_case(env, "hdr-float-shape", lambda h: _set(h, "shape", [64.0, 32.0]))
    _header_case(env, "hdr-offsets-list", lambda h: _set(h, "data_offsets", "0-100"))
    _header_case(env, "hdr-offsets-beyond", lambda h: _set(h, "data_offsets", [10**12, 10**12 + 64 * 32 * 4]))
    _header_case(env, "hdr-overlap", _overlap)
    d = _copy(env.math, env.p("passwd-bytes"))
    (d / ST).write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    # Indexes that point outside the folder, or at something that is not a shard.
    _index_case(env, "idx-absolute", lambda m: _retarget_first(m, str(env.math / ST)))
    _index_case(env, "idx-dotdot", lambda m: _retarget_first(m, "../math-copy/model.safetensors"))
    _index_case(env, "idx-subfolder", lambda m: _retarget_first(m, "sub/model-00001-of-00015.safetensors"))
    _index_case(env, "idx-not-safetensors", lambda m: _retarget_first(m, "config.json"))
    d = _index_case(env, "idx-map-list", lambda m: None)
    (d / INDEX).write_text(json.dumps({"weight_map": [["a", "b"]]}))
    # Pickles beside or instead of safetensors, for evaluate.
    d = _copy(env.math, env.p("bin-beside-safetensors"))
    (d / ST).rename(d / "weights.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle; it must never be loaded
    (env.p("qa.jsonl")).write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    # Adapter configs and LoRA factors.
    _adapter_case(env, "lora-r-string", config={"r": "abc"})
    _adapter_case(env, "lora-alpha-null", config={"lora_alpha": None})
    _adapter_case(env, "lora-bad-regex", config={"rank_pattern": {"q_proj(": 4}})
    _adapter_case(env, "lora-r-mismatch", config={"r": 8})
    _adapter_case(env, "lora-rank-zero", tensors=_rank_zero)
    _adapter_case(env, "lora-rank-mismatch", tensors=_rank_mismatch)
    _adapter_case(env, "lora-a-1d", tensors=_a_1d)
    _adapter_case(env, "lora-a-int8", tensors=_a_int8)
    d = _copy(env.lora, env.p("lora-config-folder"))
    (d / "adapter_config.json").unlink()
    (d / "adapter_config.json").mkdir()
    # config.json: a folder, layer counts that do not match the weights, another architecture.
    d = _copy(env.math, env.p("config-folder"))
    (d / "config.json").unlink()
    (d / "config.json").mkdir()
    _config_case(env, "config-more-layers", num_hidden_layers=8)
    _config_case(env, "config-fewer-layers", num_hidden_layers=4)
    _config_case(env, "expert-other-arch", model_type="qwen2")
    _config_case(env, "expert-other-heads", num_attention_heads=8)
    _config_case(env, "expert-other-hidden", hidden_size=64)


# --- per-case inputs that could block a reader: made in the sandbox, never under env.root ----------


def _first_shard(folder: Path) -> str:
    return sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))[0]


def _fifo(source: Callable[[Env], Path], folder: str, file: str | Callable[[Path], str]) -> Callable[[Env], None]:
    """A setup: copy ``source`` to ``sandbox/folder`` and replace ``file`` (a name, or a function of
    the copy that names it) with a FIFO, which a reader that opens it would block on."""

    def setup(env: Env) -> None:
        d = _copy(source(env), env.sandbox / folder)
        name = file if isinstance(file, str) else file(d)
        (d / name).unlink()
        os.mkfifo(d / name)

    return setup


_fifo_model = _fifo(lambda e: e.math, "fifo-model", ST)
_fifo_shard = _fifo(lambda e: e.p("sharded"), "fifo-shard", _first_shard)
_fifo_config = _fifo(lambda e: e.math, "fifo-config", "config.json")
_fifo_index = _fifo(lambda e: e.p("sharded"), "fifo-index", INDEX)
_fifo_adapter = _fifo(lambda e: e.lora, "fifo-adapter", "adapter_model.safetensors")
_fifo_tokenizer = _fifo(lambda e: e.math, "fifo-tokenizer", "tokenizer.json")


def _device_model(env: Env) -> None:
    d = _copy(env.math, env.sandbox / "device-model")
    (d / ST).unlink()
    (d / ST).symlink_to("/dev/zero")


def _hf_cache_layout(env: Env) -> None:  # noqa: D401 (used by tests/test_io_safety.py too)
    """``snapshots/REV/*`` links into ``blobs/`` as the Hugging Face cache lays them out."""
    make_hf_cache(env.math, env.sandbox / "hub")


def make_hf_cache(src: Path, root: Path) -> Path:
    blobs, snap = root / "blobs", root / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.copy(f, blobs / f"sha{i}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"sha{i}")
    return snap


def _inspect(name: str) -> Callable[[Env], list[str]]:
    return lambda e: ["inspect", str(e.p(name))]


def _in_sandbox(name: str) -> Callable[[Env], list[str]]:
    return lambda e: ["inspect", str(e.sandbox / name)]


def _swap_math(name: str) -> Callable[[Env], list[str]]:
    return lambda e: ["swap", "--math", str(e.p(name)), "--lang", str(e.lang), "--bottom", "1", "--top", "1", "--out", e.out]


def _swap_lora(name: str) -> Callable[[Env], list[str]]:
    return lambda e: ["swap", "--math", str(e.p(name)), "--lang", str(e.lora), "--base", str(e.base), "--bottom", "1", "--top", "1", "--out", e.out]


def _evaluate(name: str, *extra: str, model: Callable[[Env], Path] | None = None) -> Callable[[Env], list[str]]:
    def argv(e: Env) -> list[str]:
        path = model(e) if model is not None else e.p(name)
        data = ["--data", str(e.p("qa.jsonl")), "--langs", "en", "--limit", "1", "--max-new-tokens", "2", "--device", "cpu"]
        return ["evaluate", str(path), "--task", "custom", *data, *[x.format(root=e.root) for x in extra], "--out", e.out]

    return argv


RESAVE = "re-save the checkpoint"
CASES: list[Case] = [
    # --- class 2: reads outside the model folder (no shard named by the index is opened before the check)
    Case("index-absolute-shard", "inspect FOLDER (index names /abs/other/model.safetensors)", _inspect("idx-absolute"), "CheckpointError", "outside the folder", "only name *.safetensors files of its own folder"),
    Case("index-dotdot-shard", "inspect FOLDER (index names ../x/model.safetensors)", _inspect("idx-dotdot"), "CheckpointError", "outside the folder", "its own folder"),
    Case("index-subfolder-shard", "inspect FOLDER (index names sub/shard.safetensors)", _inspect("idx-subfolder"), "CheckpointError", "outside the folder", "its own folder"),
    Case("index-names-config", "inspect FOLDER (index names config.json as a shard)", _inspect("idx-not-safetensors"), "CheckpointError", "not a .safetensors file", "its own folder"),
    Case("index-map-not-object", "inspect FOLDER (weight_map is a list)", _inspect("idx-map-list"), "CheckpointError", "no weight_map", RESAVE),
    Case("header-bytes-not-printed", "inspect FOLDER (model.safetensors holds /etc/passwd's text)", _inspect("passwd-bytes"), "CheckpointError", "give no header length", "re-download or re-save"),
    # --- class 7: only regular files are opened, so nothing blocks
    Case("fifo-weights", "inspect FOLDER (model.safetensors is a FIFO)", _in_sandbox("fifo-model"), "InputPathError", "fifo", "pass a complete model folder", setup=_fifo_model),
    Case("fifo-shard", "inspect FOLDER (a shard named by the index is a FIFO)", _in_sandbox("fifo-shard"), "InputPathError", "fifo", "pass a complete model folder", setup=_fifo_shard),
    Case("fifo-config", "inspect FOLDER (config.json is a FIFO)", _in_sandbox("fifo-config"), "InputPathError", "fifo", "pass a complete model folder", setup=_fifo_config),
    Case("fifo-index", "inspect FOLDER (model.safetensors.index.json is a FIFO)", _in_sandbox("fifo-index"), "InputPathError", "fifo", "pass a complete model folder", setup=_fifo_index),
    Case("fifo-adapter-weights", "inspect ADAPTER (adapter_model.safetensors is a FIFO)", _in_sandbox("fifo-adapter"), "InputPathError", "fifo", "pass a complete", setup=_fifo_adapter),
    Case("fifo-tokenizer-swap", "swap --math FOLDER (tokenizer.json is a FIFO) ...", lambda e: ["swap", "--math", str(e.sandbox / "fifo-tokenizer"), "--lang", str(e.lang), "--bottom", "1", "--top", "1", "--out", e.out], "InputPathError", "fifo", "pass a complete model folder", setup=_fifo_tokenizer),
    Case("device-weights", "inspect FOLDER (model.safetensors -> /dev/zero)", _in_sandbox("device-model"), "InputPathError", "a device", "pass a complete model folder", setup=_device_model),
    # --- class 3: no pickle reaches torch.load, ours or the libraries'
    Case("evaluate-pickle-only-model", "evaluate FOLDER (pytorch_model.bin only)", _evaluate("pickle-only"), "CheckpointError", "never unpickles", "safe_serialization=true"),
    Case("evaluate-pickle-adapter", "evaluate ADAPTER (adapter_model.bin only)", _evaluate("lora-pickle"), "CheckpointError", "never unpickles", "safe_serialization=true"),
    Case("evaluate-bin-beside-safetensors", "evaluate FOLDER (weights.safetensors + pytorch_model.bin)", _evaluate("bin-beside-safetensors"), "CheckpointError", "other names than model.safetensors", "rename the file"),
    # --- classes 4 and 5: safetensors headers validated per the format
    Case("header-dtype-list", "inspect FOLDER (a dtype is a list)", _inspect("hdr-dtype-list"), "CheckpointError", "unsupported dtype", "re-save it in one of"),
    Case("header-dtype-unknown", "inspect FOLDER (dtype F7)", _inspect("hdr-dtype-unknown"), "CheckpointError", "unsupported dtype f7", "re-save it in one of"),
    Case("header-metadata-list", "inspect FOLDER (__metadata__ is a list)", _inspect("hdr-metadata-list"), "CheckpointError", "__metadata__ must map strings to strings", RESAVE),
    Case("header-deep-nesting", "inspect FOLDER (JSON nested 100,000 deep)", _inspect("hdr-deep-nesting"), "CheckpointError", "nested too deeply", "re-download or re-save"),
    Case("header-negative-shape", "swap --math FOLDER (shape [-4, -8]) ...", _swap_math("hdr-negative-shape"), "CheckpointError", "non-negative integers", RESAVE),
    Case("header-float-shape", "inspect FOLDER (shape [64.0, 32.0])", _inspect("hdr-float-shape"), "CheckpointError", "non-negative integers", RESAVE),
    Case("header-offsets-not-list", "inspect FOLDER (data_offsets a string)", _inspect("hdr-offsets-list"), "CheckpointError", "data_offsets must be two integers", RESAVE),
    Case("header-offsets-beyond-data", "inspect FOLDER (offsets past the end)", _inspect("hdr-offsets-beyond"), "CheckpointError", "truncated", "re-download or re-save"),
    Case("header-overlapping-tensors", "swap --math FOLDER (two tensors share bytes) ...", _swap_math("hdr-overlap"), "CheckpointError", "overlap", RESAVE),
    Case("evaluate-adapter-wrong-base", "evaluate ADAPTER --base OTHER-HIDDEN-SIZE", _evaluate("", "--base", "{root}/other-hidden", model=lambda e: e.lora), "IncompatibleModelsError", "has shape", "made for another base"),
    Case("evaluate-truncated", "evaluate TRUNCATED-FOLDER", _evaluate("truncated"), "CheckpointError", "truncated", "re-download or re-save"),
    # --- adapter configs and LoRA factors
    Case("adapter-r-string", "inspect ADAPTER (r: \"abc\")", _inspect("lora-r-string"), "CheckpointError", "r must be a positive integer", "re-save the adapter"),
    Case("adapter-alpha-null", "swap --math ADAPTER (lora_alpha: null) ...", _swap_lora("lora-alpha-null"), "CheckpointError", "lora_alpha must be a finite number", "re-save the adapter"),
    Case("adapter-bad-rank-pattern", "inspect ADAPTER (rank_pattern key 'q_proj(')", _inspect("lora-bad-regex"), "CheckpointError", "not a valid regular expression", "re-save the adapter"),
    Case("adapter-r-vs-tensors", "inspect ADAPTER (r: 8, rank-4 tensors)", _inspect("lora-r-mismatch"), "CheckpointError", "gives it r=8", "re-save the adapter"),
    Case("adapter-rank-zero", "swap --math ADAPTER (rank-0 factors) ...", _swap_lora("lora-rank-zero"), "CheckpointError", "positive rank", "re-save the adapter"),
    Case("adapter-rank-mismatch", "inspect ADAPTER (A rank 4, B rank 2)", _inspect("lora-rank-mismatch"), "CheckpointError", "positive rank", "re-save the adapter"),
    Case("adapter-lora-a-1d", "inspect ADAPTER (1-D lora_A)", _inspect("lora-a-1d"), "CheckpointError", "not 2-d", "re-save the adapter"),
    Case("adapter-int8-factor", "inspect ADAPTER (lora_A in I8)", _inspect("lora-a-int8"), "CheckpointError", "not floating point", "re-save the adapter"),
    Case("adapter-config-folder", "inspect ADAPTER (adapter_config.json is a folder)", _inspect("lora-config-folder"), "InputPathError", "is a folder", "replace it with the json file"),
    # --- config.json against the weights and against the base
    Case("config-json-folder", "inspect FOLDER (config.json is a folder)", _inspect("config-folder"), "InputPathError", "is a folder", "replace it with the json file"),
    Case("config-more-layers", "swap --math FOLDER (config says 8 layers, weights hold 6) ...", _swap_math("config-more-layers"), "CheckpointError", "says 8 layers", "fix num_hidden_layers"),
    Case("config-fewer-layers", "inspect FOLDER (config says 4 layers, weights hold 6)", _inspect("config-fewer-layers"), "CheckpointError", "says 4 layers", "fix num_hidden_layers"),
    Case("expert-other-architecture", "swap --math QWEN2-CONFIG --lang LLAMA ...", _swap_math("expert-other-arch"), "IncompatibleModelsError", "model_type", "same base model"),
    Case("expert-other-hidden-size", "swap --math HIDDEN-64-CONFIG --lang HIDDEN-32 (same shapes) ...", _swap_math("expert-other-hidden"), "CheckpointError", "says hidden_size 64 but tensor", "fix config.json"),
    Case("expert-other-heads", "swap --math 8-HEADS --lang 4-HEADS (same shapes) ...", _swap_math("expert-other-heads"), "IncompatibleModelsError", "num_attention_heads", "same base model"),
]
