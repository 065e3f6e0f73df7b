"""The causal-LM loss with the output layer applied only where a label is.

A causal LM's training forward multiplies every position's hidden state by the output layer and
then throws most of the result away: prompt tokens (label -100) and padding carry no loss. With
Gemma 3's 262,144-token vocabulary that output layer (and the float32 logits, softmax and their
gradient, ``positions x vocabulary`` each) is the largest single cost of a step. Here the model
body runs as usual, the hidden states of the positions whose *shifted* label is not -100 are
gathered, and only those go through the output layer (with Gemma's final logit soft-capping when
the config has one) into the same cross-entropy: ``sum / num_items_in_batch`` when the Trainer
passes that count (gradient accumulation), else the mean over label tokens, exactly as
``transformers``' ``ForCausalLMLoss``. More than ``HEAD_CHUNK`` labelled positions go through the
output layer in chunks whose gradients are taken at once, so the logits never exist for all of them
together. The loss and every gradient equal the standard path's up to float rounding
(``tests/test_finetune_speed.py``).

It is installed for the length of ``Trainer.train`` by replacing the core causal LM's ``forward``
(the instance attribute; PEFT's LoRA wrapper and accelerate's DDP/FSDP/autocast wrappers all end
up calling it), so the Trainer's own loss scaling, gradient accumulation and distributed wrappers
are untouched. The fast path is taken only in training mode with labels and plain inputs; anything
else (evaluation, ``inputs_embeds``, requests for hidden states or attentions, a cache) calls the
original ``forward``. Architectures whose forward does anything else between the output layer and
the loss (Granite's logit scaling, Cohere's logit scale, ...) are not in :data:`SUPPORTED` and keep
the standard path. ``LAYERSWAP_MASKED_HEAD=0`` turns it off (benchmarks compare both).
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from typing import Any

import torch

IGNORE_INDEX = -100

#: Causal-LM classes whose ``forward`` is body -> ``lm_head`` (-> final logit soft-capping) ->
#: ``ForCausalLMLoss``, checked against their transformers source.
SUPPORTED = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Olmo2ForCausalLM",
    }
)
#: Forward keywords the fast path accepts when they are None/False/0 (PEFT passes some as None).
_NEUTRAL = (
    "inputs_embeds",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "cache",
    "past_key_values",
    "use_cache",
    "logits_to_keep",
)
_MARK = "_layerswap_masked_head"
#: Set on the model while the masked head is wanted: a wrapper that accelerate puts on top of our
#: ``forward`` (``convert_outputs_to_fp32`` under mixed precision) cannot be removed, so after
#: training the patched ``forward`` must behave as the original on its own.
_ON = "_layerswap_masked_head_on"


def enabled_by_env() -> bool:
    """``LAYERSWAP_MASKED_HEAD=0`` (or ``off``/``no``/``false``) keeps the standard loss path."""
    return os.environ.get("LAYERSWAP_MASKED_HEAD", "1").strip().lower() not in ("0", "off", "no", "false")


def core_causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (itself, or the model a PEFT wrapper holds)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def why_not(model: Any) -> str | None:
    """Why the masked-head loss cannot replace ``model``'s loss, or None when it can."""
    lm = core_causal_lm(model)
    name = type(lm).__name__
    if name not in SUPPORTED:
        return f"{name} is not among the architectures whose loss path is known ({', '.join(sorted(SUPPORTED))})"
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    if LOSS_MAPPING.get(getattr(lm, "loss_type", None) or "ForCausalLM") is not ForCausalLMLoss:
        return f"{name} uses the loss {getattr(lm, 'loss_type', None)!r}, not ForCausalLMLoss"
    if "loss_function" in vars(lm):
        return f"{name} has its own loss_function"
    if lm.get_output_embeddings() is None or not hasattr(lm, "get_decoder"):
        return f"{name} exposes no output layer or decoder"
    return None


def _softcap(lm: Any, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap  # the order of operations of Gemma 2/3's forward


#: Labelled positions that go through the output layer at once. Beyond it the loss runs chunk by chunk
#: (:class:`_ChunkedHeadLoss`): a chunk's float32 logits, soft-capping, softmax and gradient (rows x
#: vocabulary: 64 MiB each for Gemma 3's 262k tokens) are freed before the next, so a step's memory no
#: longer grows with its labelled tokens (the demo's 4 x 256 math batch: 5.8 GiB peak unchunked, 4.8 at 256 rows).
HEAD_CHUNK = 64


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of the output layer over row chunks; each chunk's gradients (rows and the
    head's trained parameters) are taken in the forward, so nothing of size rows x vocabulary is kept
    for the backward, and no logits are computed twice (as checkpointing would)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, targets: torch.Tensor, lm: Any, *params: torch.Tensor) -> torch.Tensor:
        head = lm.get_output_embeddings()
        grad_rows = torch.zeros_like(rows)
        grad_params = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        for start in range(0, rows.shape[0], HEAD_CHUNK):
            part = slice(start, start + HEAD_CHUNK)
            with torch.enable_grad():
                h = rows[part].detach().requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(_softcap(lm, head(h)).float(), targets[part], reduction="sum")
                grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
            grad_rows[part] = grads[0]
            for acc, g in zip(grad_params, grads[1:], strict=True):
                if g is not None:
                    acc += g
            total += loss.detach()
        ctx.save_for_backward(grad_rows, *grad_params)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_rows, *grad_params = ctx.saved_tensors
        return (grad_rows * grad, None, None, *(g * grad for g in grad_params))


def masked_head_loss(
    lm: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    **body_kwargs: Any,
) -> torch.Tensor:
    """``ForCausalLMLoss`` of ``lm`` on ``labels``, with the output layer only at labelled positions.

    Position ``t`` predicts ``labels[t + 1]``; the rows whose target is not -100 are the only ones
    that reach the output layer. Reduction: sum over targets divided by ``num_items_in_batch``
    when given, else the mean over targets (NaN when there are none, as the standard path).
    """
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **body_kwargs
    ).last_hidden_state
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[keep], targets[keep]
    if rows.shape[0] > HEAD_CHUNK:
        params = [p for p in lm.get_output_embeddings().parameters() if p.requires_grad]
        total = _ChunkedHeadLoss.apply(rows, targets, lm, *params)
        if num_items_in_batch is None:
            return total / targets.numel()
    else:
        logits = _softcap(lm, lm.get_output_embeddings()(rows)).float()
        if num_items_in_batch is None:
            return torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
        total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _fast_forward(original: Any):  # noqa: ANN202
    """A ``forward`` that takes the masked-head path when it can and calls ``original`` otherwise."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):  # noqa: ANN001, ANN202
        plain = (
            self.training
            and getattr(self, _ON, False)
            and labels is not None
            and input_ids is not None
            and torch.is_grad_enabled()
            and all(not kwargs.get(k) for k in _NEUTRAL)
            and set(kwargs) <= {*_NEUTRAL, "num_items_in_batch"}
        )
        if not plain:
            return original(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels, **kwargs
            )
        loss = masked_head_loss(
            self,
            input_ids,
            labels,
            attention_mask=attention_mask,
            position_ids=position_ids,
            num_items_in_batch=kwargs.get("num_items_in_batch"),
        )
        return CausalLMOutputWithPast(loss=loss)

    setattr(forward, _MARK, True)
    return forward


def install(model: Any) -> bool:
    """Give ``model``'s core causal LM the masked-head ``forward``; False (and nothing changed) when it cannot apply."""
    lm = core_causal_lm(model)
    if why_not(model) is not None:
        return False
    setattr(lm, _ON, True)
    if getattr(getattr(lm.forward, "__func__", lm.forward), _MARK, False):
        return True
    lm.forward = types.MethodType(_fast_forward(lm.forward), lm)
    return True


def uninstall(model: Any) -> None:
    """Restore the class's ``forward`` if ours is still the one in place; where a wrapper was added on
    top (it stays), ours inside it is switched off and calls the original."""
    lm = core_causal_lm(model)
    setattr(lm, _ON, False)
    current = vars(lm).get("forward")
    if current is not None and getattr(getattr(current, "__func__", current), _MARK, False):
        del lm.forward


@contextlib.contextmanager
def masked_head(model: Any, enabled: bool = True) -> Iterator[bool]:
    """The masked-head loss for the length of the block; yields whether it applies."""
    active = enabled and install(model)
    try:
        yield active
    finally:
        if active:
            uninstall(model)
