"""Loading a model to evaluate, and batched greedy generation that honours stop strings per row.

Why a loop of our own rather than ``model.generate``: ``generate`` keeps every row of a batch
running until the slowest row stops, so one rambling answer makes seven finished ones pay for
``max_new_tokens`` steps. Here a row leaves the batch (and the KV cache) the step it hits a stop
string or an end-of-sequence token, and rows are sorted by prompt length to keep left padding
small. Few-shot prompts share their exemplars: the common token prefix of all prompts is run once
and its KV cache is copied into every batch (each row left padded exactly as a full prompt would
be), so prefill only pays for each question; each row's question is prefilled on its own (no padding
to compute) and the rows' caches laid side by side. The output layer is screened in bfloat16 with a
rigorous error bound and only its candidates computed in float32 (:class:`~layerswap.evaluate.greedy_head.GreedyHead`), a near tie
taking the full float32 layer. Greedy decoding with the same position ids and cache as ``generate``,
so at batch size 1 the tokens are those of ``generate`` (and of lm-eval).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerswap.errors import CheckpointError, ConfigError, InputPathError
from layerswap.evaluate.greedy_head import GreedyHead, greedy_head
from layerswap.progress import bar


@dataclass
class LoadedModel:
    """A causal LM and its tokenizer, ready to evaluate (pad token set, eval mode)."""

    model: Any
    tokenizer: Any
    name: str = "model"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids


def auto_device(device: str | None = None) -> torch.device:
    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def auto_dtype(device: torch.device, config_dtype: Any, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """float32 on CPU (16-bit matmuls are slow there); the checkpoint's dtype on accelerators."""
    if dtype is not None and dtype != "auto":
        from layerswap.io import parse_dtype

        return parse_dtype(dtype)
    if device.type == "cpu":
        return torch.float32
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Models without a pad token get their eos as pad (padding is ours and always masked)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token: cannot batch; set one in tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def as_loaded(model: Any, tokenizer: Any = None, *, name: str = "in-memory") -> LoadedModel:
    """Wrap an already loaded model (e.g. one merged in memory by the sweep) and its tokenizer."""
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is None:
        raise ConfigError("an in-memory model needs its tokenizer: pass tokenizer=...")
    model.eval()
    return LoadedModel(model, prepare_tokenizer(tokenizer), name=name, info={"source": "in-memory"})


def load_model(
    spec: str | os.PathLike[str] | LoadedModel | tuple,
    *,
    base: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """A model folder, a PEFT LoRA adapter (on ``base`` or the base it names), or a short name."""
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, tuple):
        return as_loaded(*spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerswap.io import LoraAdapter, ModelFolder, is_adapter_folder, resolve_model
    from layerswap.io.lora import adapter_base, open_adapter_for_peft
    from layerswap.io.model_folder import check_complete_load, check_tokenizer_fits

    path = resolve_model(spec)
    dev = auto_device(device)
    adapter: Path | None = None
    lora: LoraAdapter | None = None
    if is_adapter_folder(path):
        adapter = path
        # Validated: safetensors weights only (pickles refused), a LoRA's config and factor shapes checked.
        lora, cfg = open_adapter_for_peft(path)
        base_spec = base or adapter_base(path, cfg)  # a relative name: beside the adapter, never the working directory
        if not base_spec:
            raise InputPathError(f"adapter {path} does not name its base model: pass --base")
        path = resolve_model(base_spec)
    if is_adapter_folder(path):
        raise InputPathError(f"{path} is a LoRA adapter, not a full model: pass the base model folder as --base")
    folder = ModelFolder(path, need_layers=False)  # headers validated; truncation and pickle-only folders refused, one line
    if lora is not None:
        lora.check_base(folder)
    folder.check_transformers_names()  # with use_safetensors=True below, transformers never falls back to a pickle
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise CheckpointError(
            f"{path} needs its own Python code (auto_map) to load, which layerswap does not run unless the caller turns "
            "trust_remote_code on: use a built-in architecture, or review the code and pass trust_remote_code to load_model"
        ) from None
    torch_dtype = auto_dtype(dev, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loading = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
        )
        tok_dir = adapter if adapter is not None and (adapter / "tokenizer_config.json").exists() else path
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            if "custom code" not in str(exc) and "trust_remote_code" not in str(exc):
                raise
            raise CheckpointError(
                f"the tokenizer of {tok_dir} needs its own Python code (auto_map), which layerswap does not run unless the "
                "caller turns trust_remote_code on: use a built-in tokenizer, or review the code and pass trust_remote_code to load_model"
            ) from None
    check_complete_load(path, loading)  # never a randomly initialised head
    check_tokenizer_fits(tokenizer, model, tok_dir)
    if adapter is not None:
        model = _merge_adapter(model, adapter)
    model.to(dev).eval()
    info = {"source": str(spec), "base": str(path) if adapter else None, "device": str(dev), "dtype": str(torch_dtype).replace("torch.", "")}
    return LoadedModel(model, prepare_tokenizer(tokenizer), name=Path(str(spec)).name, info=info)


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """PEFT's merge of a LoRA adapter whose weights come from its safetensors file only (PEFT itself
    would fall back to ``adapter_model.bin``, a pickle)."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = PeftConfig.from_pretrained(adapter)
    config.inference_mode = True
    peft_model = get_peft_model(model, config)
    result = set_peft_model_state_dict(peft_model, load_file(adapter / "adapter_model.safetensors"))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise CheckpointError(f"adapter {adapter} holds {unexpected[0]!r}, which its base does not have: the adapter was made for another base")
    return peft_model.merge_and_unload()


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids as lm-eval's HFLM makes them: the tokenizer's own special tokens, unless ``text``
    already starts with the BOS string."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def first_stop(text: str, stop: Sequence[str]) -> int:
    """Where ``text`` meets its first stop string (lm-eval's cut of a generation), or -1 if none does."""
    cut = -1
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
    return cut


MIN_SHARED_PREFIX = 32  # tokens; below this, sharing the prefix is not worth a forward pass


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all ``seqs``, leaving each at least one token."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _prefix_kv(head: GreedyHead, prefix: list[int], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of ``prefix`` at positions 0.., from a cache without sliding-window
    cropping (the attention masks still apply each layer's window)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    head.hidden(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, cache=cache)
    return [(layer.keys, layer.values) for layer in cache.layers]


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    stop: Sequence[str] = (),
    max_new_tokens: int = 256,
    batch_size: int = 8,
    desc: str = "generate",
    share_prefix: bool = True,
    screen: bool | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts``, each cut at its first stop string.

    Rows are sorted by token length (longest first, as lm-eval does), left padded, and leave the
    batch as soon as they stop; the result is in the order of ``prompts``. ``screen`` forces the
    screened output layer on or off (default: on where it applies, see :class:`GreedyHead`).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError("--batch-size and --max-new-tokens must be at least 1")
    tok = lm.tokenizer
    device = lm.device
    eos = lm.eos_ids
    pad_id = tok.pad_token_id
    encoded = [encode(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    n_shared = common_prefix_length(encoded) if share_prefix and len(encoded) > 1 else 0
    head = greedy_head(lm, screen=screen)
    prefix = _prefix_kv(head, encoded[0][:n_shared], device) if n_shared >= MIN_SHARED_PREFIX else None
    pbar = bar(desc=desc, total=len(prompts), unit="ex")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            for i, text in zip(rows, _generate_batch(head, tok, [encoded[i] for i in rows], stop, eos, pad_id, max_new_tokens, device, pbar, prefix), strict=True):
                outputs[i] = text
    finally:
        pbar.close()
    return outputs


def _install_prefix(cache: Any, prefix: list[tuple[torch.Tensor, torch.Tensor]], pads: list[int]) -> int:
    """Fill the first P columns of a left-padded batch's cache from the shared prefix KV (row r's
    prefix starts after its ``pads[r]`` pad columns); returns P, where the rest of the prompt starts."""
    start = prefix[0][0].shape[-2]
    for layer, (keys, values) in enumerate(prefix):
        kb = keys.new_zeros((len(pads), *keys.shape[1:]))
        vb = values.new_zeros((len(pads), *values.shape[1:]))
        for r, pad in enumerate(pads):
            p = min(pad, start)
            kb[r, :, p:] = keys[0, :, : start - p]
            vb[r, :, p:] = values[0, :, : start - p]
        cache.update(kb, vb, layer)
    return start


def _prefill_rows(head: GreedyHead, batch: list[list[int]], width: int, device: torch.device, prefix: Any) -> tuple[Any, Any]:
    """Prefill each row on its own (no padding to compute: with prompts of different lengths a
    padded prefill wastes up to half its work), then lay the rows' caches side by side, left padded
    to ``width``, as the batch's cache. Row by row each prefill is the batch-size-1 computation.

    Returns ``(None, None)`` where the layout cannot be rebuilt exactly: a cache that is not one
    plain tensor per layer, or a row longer than a sliding window (whose cache is cropped)."""
    window = getattr(head.model.config, "sliding_window", None)
    if isinstance(window, int) and width >= window - 1:
        return None, None
    per_row, last = [], []
    for ids in batch:
        cache = _new_cache(head.model)
        start = _install_prefix(cache, prefix, [0]) if prefix is not None else 0
        ids_t = torch.tensor([ids], dtype=torch.long, device=device)
        pos = torch.arange(len(ids), device=device)[None, :]
        hidden = head.hidden(input_ids=ids_t[:, start:], attention_mask=torch.ones_like(ids_t), position_ids=pos[:, start:], use_cache=True, cache=cache)
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "keys", None) is None or layer.keys.shape[-2] != len(ids) for layer in layers):
            return None, None
        per_row.append([(layer.keys, layer.values) for layer in layers])
        last.append(hidden)
    merged = _new_cache(head.model)
    for layer in range(len(per_row[0])):
        keys, values = per_row[0][layer]
        kb = keys.new_zeros((len(batch), keys.shape[1], width, keys.shape[3]))
        vb = values.new_zeros((len(batch), values.shape[1], width, values.shape[3]))
        for r, ids in enumerate(batch):
            kb[r, :, width - len(ids) :] = per_row[r][layer][0][0]
            vb[r, :, width - len(ids) :] = per_row[r][layer][1][0]
        merged.update(kb, vb, layer)
    return merged, head.tokens(torch.cat(last, dim=0))


def _generate_batch(head, tok, batch: list[list[int]], stop, eos, pad_id, max_new_tokens, device, pbar, prefix=None) -> list[str]:  # noqa: ANN001
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[r, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache, next_tokens = _prefill_rows(head, batch, width, device, prefix) if len(batch) > 1 else (None, None)
    if cache is None:
        cache = _new_cache(head.model)
        start = _install_prefix(cache, prefix, [width - len(ids) for ids in batch]) if prefix is not None else 0
        next_tokens = head.next_tokens(
            input_ids=input_ids[:, start:], attention_mask=mask, position_ids=position_ids[:, start:], use_cache=True, cache=cache
        )
    alive = list(range(len(batch)))  # original row of each live batch position
    generated: list[list[int]] = [[] for _ in batch]
    texts: list[str] = [""] * len(batch)
    next_pos = position_ids[:, -1]
    for step in range(max_new_tokens):
        keep: list[int] = []
        for b, r in enumerate(alive):
            t = int(next_tokens[b])
            if t in eos:
                done = True
            else:
                generated[r].append(t)
                text = tok.decode(generated[r], skip_special_tokens=True)
                cut = first_stop(text, stop)
                done = cut != -1
                texts[r] = text[:cut] if done else text
            if done or step == max_new_tokens - 1:
                pbar.update(1)
            else:
                keep.append(b)
        if not keep:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(idx)
            mask, next_tokens, next_pos = mask[idx], next_tokens[idx], next_pos[idx]
            alive = [alive[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        next_pos = next_pos + 1
        next_tokens = head.next_tokens(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True, cache=cache)
    return texts
