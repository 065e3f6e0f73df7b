"""The masked-head loss (:mod:`layerswap.io.head_loss`) as a fine-tune's training ``forward``.

The loss itself (the output layer only at labelled positions, in chunks of ``HEAD_CHUNK`` rows, equal
to ``transformers``' ``ForCausalLMLoss`` up to float rounding) lives in the core, which the gradient
passes of importance and Fisher merging share. Here it is installed for the length of
``Trainer.train`` by replacing the core causal LM's ``forward``
(the instance attribute; PEFT's LoRA wrapper and accelerate's DDP/FSDP/autocast wrappers all end
up calling it), so the Trainer's own loss scaling, gradient accumulation and distributed wrappers
are untouched. The fast path is taken only in training mode with labels and plain inputs; anything
else (evaluation, ``inputs_embeds``, requests for hidden states or attentions, a cache) calls the
original ``forward``. ``LAYERSWAP_MASKED_HEAD=0`` turns it off (benchmarks compare both).
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterator
from typing import Any

import torch

from layerswap.io.head_loss import SUPPORTED, core_causal_lm, masked_head_loss, why_not

__all__ = ["SUPPORTED", "core_causal_lm", "enabled_by_env", "install", "masked_head", "masked_head_loss", "uninstall", "why_not"]

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
