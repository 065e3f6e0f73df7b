"""Passes of a causal language model over a task's texts: the data-aware machinery the wings share.

The analysis (``importance``, the gradient lens) and the data-aware merges (Fisher, RegMean) read
the same things: a data spec's texts as fine-tuning reads them (:func:`load_texts`), a model loaded
from safetensors only (:func:`load_model`, a LoRA expert as its base plus ``B @ A * scaling``), the
mean of each parameter's squared or plain gradient over batches (:func:`gradient_moments`) and the
Gram matrix of each linear layer's inputs (:func:`input_grams`). They live in the core so that
neither wing imports the other. torch is imported by the functions, not by this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from layerswap.errors import DataError

if TYPE_CHECKING:
    import torch

    from layerswap.io.lora import LoraAdapter
    from layerswap.io.model_folder import ModelFolder


def _joined(prompt: str, completion: str) -> str:
    """Prompt then completion as one text, with a space between unless one side already has it."""
    if prompt[-1:].isspace() or completion[:1].isspace() or not prompt or not completion:
        return prompt + completion
    return f"{prompt} {completion}"


def load_texts(spec: str, *, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None) -> list[str]:
    """The first ``limit`` texts of one task's data spec, read as fine-tuning reads it."""
    from layerswap.io.records import load_records

    records = load_records(spec, data_dir=data_dir)
    texts = records.texts if records.format == "text" else [_joined(prompt, completion) for prompt, completion in records.pairs]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"data spec {spec!r} gave no text: pass a file or corpus with at least one example")
    return texts[:limit] if limit else texts


def _batches(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int, seq_len: int, desc: str) -> Iterator[tuple[dict[str, torch.Tensor], Any]]:
    """Each batch of ``texts`` tokenised on the model's device (with LM labels), beside a progress bar."""
    from layerswap.progress import bar

    device = next(model.parameters()).device
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    with bar(desc=desc, total=len(batches), unit="batch") as progress_bar:
        for batch in batches:
            enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=seq_len)
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            enc["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            yield enc, progress_bar
            progress_bar.update(1)


#: Rows per output-layer chunk in a gradient pass: smaller than fine-tuning's (each chunk's logits,
#: soft-capping and softmax with their gradients are ~8 x rows x vocabulary floats: 0.13 GB at 16 rows on
#: Gemma 3), since here the model's, the Fisher sum's and the tied embedding's gradient's 3 GB are all resident.
PASS_CHUNK = 16


def _lm_backward(model: torch.nn.Module, enc: dict[str, torch.Tensor], desc: str) -> torch.Tensor:
    """The batch's LM loss (mean over label tokens), backpropagated; returns the loss.

    Where the architecture allows (:func:`layerswap.io.head_loss.why_not`), the output layer sees only
    the labelled positions, ``PASS_CHUNK`` rows at a time, and its weight's gradient is put in ``.grad``
    before the body's backward: a tied input embedding then adds its (sparse) rows into that tensor in
    place, so the batch's gradient of the 262k x 640 embedding exists once, not as two summands and a sum.
    Elsewhere the model's own forward and loss."""
    import torch

    from layerswap.io.head_loss import core_causal_lm, head_chunks, labelled_rows, why_not

    if why_not(model) is not None:
        loss = model(**enc).loss
        _check_finite(loss, desc)
        loss.backward()
        return loss
    lm = core_causal_lm(model)
    rows, targets = labelled_rows(lm, enc["input_ids"], enc["labels"], attention_mask=enc["attention_mask"])
    params = [p for p in lm.get_output_embeddings().parameters() if p.requires_grad]
    total, grad_rows, grad_params = head_chunks(lm, rows, targets, params, PASS_CHUNK)
    loss = total / targets.numel()
    _check_finite(loss, desc)
    scale = torch.ones_like(total) / targets.numel()  # d loss / d total, as autograd's division gives it
    for p, g in zip(params, grad_params, strict=True):
        p.grad = g.mul_(scale)
    del grad_params
    rows.backward(grad_rows.mul_(scale))
    return loss


def _check_finite(loss: torch.Tensor, desc: str) -> None:
    import torch

    if not torch.isfinite(loss):
        raise DataError(f"the loss is {float(loss.detach())} on a batch of {desc}: check the data and the model")


@contextlib.contextmanager
def _recomputed_layers(model: torch.nn.Module) -> Iterator[None]:
    """Each decoder layer's activations recomputed in the backward instead of kept, for the block.

    A gradient pass holds the model, its Fisher sum and the tied embedding's gradient already (3 x the
    embedding's 0.67 GB on Gemma 3); the activations of 18 layers at 4 x 128 tokens added ~0.45 GB more.
    ``torch.utils.checkpoint`` around each layer keeps only its inputs; the recomputation is the same
    forward, so the gradients are the same values, for about a third more body compute."""
    from torch.utils.checkpoint import checkpoint

    from layerswap.io.head_loss import core_causal_lm

    lm = core_causal_lm(model)
    layers = getattr(lm.get_decoder(), "layers", None) if hasattr(lm, "get_decoder") else None
    wrapped = []
    for layer in layers if layers is not None else ():
        own = vars(layer).get("forward")
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
        wrapped.append((layer, own))
    try:
        yield
    finally:
        for layer, own in wrapped:
            if own is None:
                del layer.forward
            else:
                layer.forward = own


@contextlib.contextmanager
def _sparse_embedding_grads(model: torch.nn.Module) -> Iterator[None]:
    """Input embeddings give sparse gradients (only the rows of the batch's tokens) for the block.

    The dense gradient of an embedding lookup is ``vocabulary x hidden`` (0.67 GB on Gemma 3) although
    a batch touches a few hundred rows; with tied embeddings it is added to the output layer's dense
    gradient, so the sum is formed in place. The values are the same (rows summed per token id)."""
    import torch

    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and not m.sparse]
    for m in embeddings:
        m.sparse = True
    try:
        yield
    finally:
        for m in embeddings:
            m.sparse = False


def _backward_batches(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int,
    seq_len: int,
    desc: str,
    take: Callable[[str, torch.Tensor], None] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """One backward pass of the LM loss per batch of ``texts``; yields each trainable parameter's gradient (grads cleared after).

    With ``take``, each parameter's gradient is handed to ``take(name, grad)`` as soon as the backward
    has it complete and dropped at once (the batches then yield empty dicts; an untied input
    embedding's gradient comes sparse): a pass never holds the whole model's gradient, only the part
    of it the backward is still forming.
    """
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    hooks = []
    if take is not None:

        def handover(name: str) -> Callable[[torch.Tensor], None]:
            def hook(p: torch.Tensor) -> None:
                with torch.no_grad():
                    take(name, p.grad)
                p.grad = None

            return hook

        hooks = [p.register_post_accumulate_grad_hook(handover(n)) for n, p in params.items()]
    model.eval()  # no dropout: the gradient of the model as it is
    try:
        with _sparse_embedding_grads(model), _recomputed_layers(model):
            for enc, progress_bar in _batches(model, tokenizer, texts, batch_size=batch_size, seq_len=seq_len, desc=desc):
                model.zero_grad(set_to_none=True)
                loss = _lm_backward(model, enc, desc)
                if hooks:  # gradients the backward did not reach (an untied output layer's, set before it)
                    for name, p in params.items():
                        if p.grad is not None:
                            with torch.no_grad():
                                take(name, p.grad)
                            p.grad = None
                with torch.no_grad():
                    yield {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in params.items() if p.grad is not None}
                progress_bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)


def gradient_moments(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 4,
    seq_len: int = 128,
    desc: str = "gradients",
    power: int = 2,
) -> tuple[dict[str, torch.Tensor], int]:
    """Mean over the batches of ``texts`` of each parameter's gradient to ``power`` (2: the diagonal Fisher, 1: the mean gradient); returns (means, batches).

    Each gradient is added into its sum as the backward completes it (:func:`_backward_batches`'
    ``take``), so memory is the model, the sums and the gradient being formed, not a second full gradient.
    """
    import torch

    sums = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}

    def take(name: str, g: torch.Tensor) -> None:
        if g.is_sparse:  # an untied embedding: only the batch's rows, each token's rows summed first
            g = g.coalesce()
            rows, values = g.indices()[0], g.values()
            sums[name].index_add_(0, rows, values * values if power == 2 else values)
        elif power == 2:
            sums[name].addcmul_(g, g)
        else:
            sums[name].add_(g)

    batches = sum(1 for _ in _backward_batches(model, tokenizer, texts, batch_size=batch_size, seq_len=seq_len, desc=desc, take=take))
    for s in sums.values():
        s.div_(max(1, batches))
    return sums, batches


def input_grams(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    keep: Callable[[str], bool],
    batch_size: int = 4,
    seq_len: int = 128,
    desc: str = "grams",
) -> tuple[dict[str, torch.Tensor], int]:
    """``X^T X`` of the inputs of each ``nn.Linear`` whose weight name passes ``keep``, over the
    non-padding tokens of ``texts`` (forward passes only); returns ({weight name: Gram}, tokens)."""
    import torch

    grams: dict[str, torch.Tensor] = {}
    masks: list[torch.Tensor] = []
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def accumulate(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])[masks[-1]].to(torch.float32)
            if name not in grams:
                grams[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
            grams[name].addmm_(x.T, x)

        return accumulate

    for module_name, module in model.named_modules():
        weight = f"{module_name}.weight"
        if isinstance(module, torch.nn.Linear) and keep(weight):
            hooks.append(module.register_forward_hook(hook(weight)))
    tokens = 0
    model.eval()
    try:
        with torch.no_grad():
            for enc, _ in _batches(model, tokenizer, texts, batch_size=batch_size, seq_len=seq_len, desc=desc):
                masks.append(enc["attention_mask"].reshape(-1).bool())
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                tokens += int(masks[-1].sum())
                masks.pop()
    finally:
        for h in hooks:
            h.remove()
    return grams, tokens


def load_model(
    folder: ModelFolder,
    device: str,
    *,
    adapter: LoraAdapter | None = None,
    tokenizer_from: ModelFolder | None = None,
) -> tuple[torch.nn.Module, Any]:
    """A float32 causal LM from safetensors only, and its tokenizer (right padding, a pad token).

    ``adapter``: a LoRA adapter on ``folder`` (its base), applied as ``B @ A * scaling`` to each
    adapted weight (no PEFT, nothing merged to disk). ``tokenizer_from``: where the tokenizer is when
    ``folder`` has none (an expert saved without one).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = folder.path
    if tokenizer_from is not None and not any((folder.path / n).exists() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        tok_dir = tokenizer_from.path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    folder.check_transformers_names()  # safetensors only: transformers never falls back to a pickle
    model = AutoModelForCausalLM.from_pretrained(folder.path, dtype=torch.float32, use_safetensors=True)
    if adapter is not None:
        from layerswap.io.deltas import DeltaView

        view = DeltaView(adapter, folder, label=f"adapter {adapter.path}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in adapter.names():
                if name in params:
                    params[name].copy_(view.weight(name, torch.float32))
    return model.to(device), tokenizer
