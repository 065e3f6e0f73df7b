"""The causal-LM loss with the output layer applied only where a label is, in chunks of rows.

A causal LM's forward multiplies every position's hidden state by the output layer and then throws
most of the result away: prompt tokens (label -100) and padding carry no loss. With Gemma 3's
262,144-token vocabulary that output layer (and the float32 logits, softmax and their gradient,
``positions x vocabulary`` each) is the largest single cost of a training step or of a gradient
pass. Here the model body runs as usual, the hidden states of the positions whose *shifted* label is
not -100 are gathered, and only those go through the output layer (with Gemma's final logit
soft-capping when the config has one) into the same cross-entropy: ``sum / num_items_in_batch``
when given (gradient accumulation), else the mean over label tokens, exactly as ``transformers``'
``ForCausalLMLoss``. More than ``HEAD_CHUNK`` labelled positions go through the output layer in
chunks whose gradients are taken at once, so the logits never exist for all of them together. The
loss and every gradient equal the standard path's up to float rounding (``tests/test_finetune_speed.py``).

It lives in the core because fine-tuning (:mod:`layerswap.finetune.loss`, which installs it as the
model's training ``forward``) and the gradient passes of :mod:`layerswap.io.lm_passes` (importance,
the gradient lens, Fisher merging) both use it. Architectures whose forward does anything else
between the output layer and the loss (Granite's logit scaling, Cohere's logit scale, ...) are not
in :data:`SUPPORTED` and keep the standard path.
"""

from __future__ import annotations

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

#: Labelled positions that go through the output layer at once. Beyond it the loss runs chunk by chunk
#: (:class:`_ChunkedHeadLoss`): a chunk's float32 logits, soft-capping, softmax and gradient (rows x
#: vocabulary: 64 MiB each for Gemma 3's 262k tokens) are freed before the next, so a step's memory no
#: longer grows with its labelled tokens (the demo's 4 x 256 math batch: 5.8 GiB peak unchunked, 4.8 at 256 rows).
HEAD_CHUNK = 64


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


def _plain_linear_weight(head: Any, params: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor | None:
    """The head's weight when the head is a bias-free ``nn.Linear`` whose weight is the one trained
    parameter and no autocast is on: its gradient can then be summed in place chunk by chunk."""
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or len(params) != 1 or params[0] is not head.weight:
        return None
    if torch.is_autocast_enabled(rows.device.type):
        return None
    return head.weight


def head_chunks(
    lm: Any, rows: torch.Tensor, targets: torch.Tensor, params: list[torch.Tensor], chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Summed cross-entropy of ``lm``'s output layer on ``rows`` against ``targets``, ``chunk`` rows
    (default :data:`HEAD_CHUNK`) at a time, with its gradients: (sum, d sum / d rows, d sum / d each
    of ``params``). Nothing of size rows x vocabulary outlives its chunk; a bias-free linear head's
    weight gradient is summed in place (``addmm_``: no vocabulary x hidden tensor per chunk, 0.67 GB
    on Gemma 3)."""
    chunk = chunk or HEAD_CHUNK
    head = lm.get_output_embeddings()
    weight = _plain_linear_weight(head, params, rows)
    rows = rows.detach()
    grad_rows = torch.zeros_like(rows)
    grad_params = [torch.zeros_like(p) for p in params]
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], chunk):
        part = slice(start, start + chunk)
        h = rows[part]
        with torch.enable_grad():
            if weight is not None:  # z = h W^T; d/dh = dz W, d/dW = dz^T h (as linear's own backward)
                z = torch.nn.functional.linear(h, weight.detach()).requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(_softcap(lm, z).float(), targets[part], reduction="sum")
                (grad_z,) = torch.autograd.grad(loss, [z])
                grad_rows[part] = grad_z.mm(weight.detach())
                grad_params[0].addmm_(grad_z.t(), h)
            else:
                h = h.detach().requires_grad_(True)
                loss = torch.nn.functional.cross_entropy(_softcap(lm, head(h)).float(), targets[part], reduction="sum")
                grads = torch.autograd.grad(loss, [h, *params], allow_unused=True)
                grad_rows[part] = grads[0]
                for acc, g in zip(grad_params, grads[1:], strict=True):
                    if g is not None:
                        acc += g
        total += loss.detach()
    return total, grad_rows, grad_params


class _ChunkedHeadLoss(torch.autograd.Function):
    """:func:`head_chunks` as an autograd function: its gradients are taken in the forward, so nothing
    of size rows x vocabulary is kept for the backward, and no logits are computed twice (as
    checkpointing would); the backward scales the kept gradients in place instead of copying them."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, targets: torch.Tensor, lm: Any, *params: torch.Tensor) -> torch.Tensor:
        total, grad_rows, grad_params = head_chunks(lm, rows, targets, list(params))
        ctx.kept = (grad_rows, grad_params)  # not inputs or outputs: kept on ctx, released by the backward
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.kept is None:
            raise RuntimeError("the chunked head loss was backpropagated twice: its gradients are used up by the first")
        (grad_rows, grad_params), ctx.kept = ctx.kept, None
        return (grad_rows.mul_(grad), None, None, *(g.mul_(grad) for g in grad_params))


def labelled_rows(
    lm: Any, input_ids: torch.Tensor, labels: torch.Tensor, **body_kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body's hidden states at the positions whose shifted label is not -100, and those labels.

    Position ``t`` predicts ``labels[t + 1]``; only these rows reach the output layer."""
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **body_kwargs).last_hidden_state
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    return hidden[keep], targets[keep]


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
    rows, targets = labelled_rows(lm, input_ids, labels, attention_mask=attention_mask, position_ids=position_ids, **body_kwargs)
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
