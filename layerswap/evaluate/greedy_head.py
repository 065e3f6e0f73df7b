"""The greedy output layer: the argmax of the logits without the full float32 product, proven equal.

With a 262k vocabulary the output layer is most of a decoding step on CPU (Gemma 3 270M: 168M of
its 268M multiply-adds per token), and greedy decoding only needs its argmax. ``GreedyHead``
finds that argmax without the full float32 product, and proves it is the one ``generate`` picks:

1. screen: ``A = bf16(h) @ bf16(W).T`` (bfloat16 weights, float32 accumulation: about 3x
   faster here), with a rigorous bound ``|A_i - L_i| <= e_i`` on the gap to the float32 logit
   ``L_i`` that ``model.generate`` computes, whatever its summation order: rounding h, w and the
   output to bfloat16 (unit roundoff 2^-8) and float32 accumulation over K terms (gamma_K);
2. every token whose upper bound ``A_i + e_i`` reaches the best lower bound ``max(A - e)`` is a
   candidate; all others are strictly below the winner;
3. the candidates' logits are computed in float32, and the winner is accepted only if it beats
   every other candidate by more than both products' float32 error bounds combined; otherwise
   (a near tie, rare) that step computes the full float32 output layer exactly as ``generate``.

Used for float32 models whose logits are the output layer's plain product (no soft-capping, no
scaling, no bias); any other model takes the full output layer.
"""

from __future__ import annotations

from typing import Any

import torch


def cache_kw(model: Any) -> str:
    """``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


SCREEN_MIN_VOCAB = 16384  # below this the full output layer is cheap: no screening
SCREEN_MAX_CANDIDATES = 1 / 16  # share of the vocabulary beyond which a step takes the full layer
_PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text"}
_U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
_U_F32 = 2.0**-24
_FINGERPRINT_STRIDE = 997  # rows compared to tell a reused screen from weights changed in place


class GreedyHead:
    """``argmax(lm_head(h))`` of final hidden states ``h`` (batch, 1, hidden), as ``generate`` takes it."""

    def __init__(self, model: Any, *, screen: bool | None = None) -> None:
        self.model = model
        self.head = model.get_output_embeddings()
        self.stats = {"steps": 0, "full": 0, "candidates": 0}
        self.weight = self.bf16 = self.norms = None
        if screen is None:
            screen = screenable(model) and self.head.weight.shape[0] >= SCREEN_MIN_VOCAB
        if screen and screenable(model):
            w = self.head.weight.detach()
            self.weight = w
            self.version = _version(self.head.weight)
            self.decoder = model.base_model
            self.bf16 = w.to(torch.bfloat16)
            self.norms = torch.linalg.vector_norm(w, dim=1) * (1 + 1e-5)  # a safe upper bound on |w_i|
            k = w.shape[1]
            gamma = 2 * k * _U_F32  # >= gamma_K = K u / (1 - K u) for float32 sums of K products
            # |A_i - exact_i| <= |h||w_i| (2 u16 + u16^2) + gamma |h^||w^_i|; |L_i - exact_i| <= gamma |h||w_i|
            self.norm_factor = (2 * _U_BF16 + _U_BF16**2 + gamma * (1 + _U_BF16) ** 2 + gamma) * 1.01
            self.gamma = gamma

    @property
    def screening(self) -> bool:
        return self.weight is not None

    def fresh(self, model: Any) -> bool:
        """Still valid for ``model``: same output layer, weights unchanged since the screen was built."""
        if model is not self.model:
            return False
        if not self.screening:
            return True
        w = self.head.weight
        return (
            model.get_output_embeddings() is self.head
            and w.data_ptr() == self.weight.data_ptr()
            and _version(w) == self.version
            and torch.equal(w.detach()[:: _FINGERPRINT_STRIDE].to(torch.bfloat16), self.bf16[:: _FINGERPRINT_STRIDE])
        )

    def hidden(self, **inputs: Any) -> torch.Tensor:
        """One forward pass on ``inputs`` (ids, mask, positions, cache): what :meth:`tokens` takes
        (the last position's final hidden state, or its logits where the head is not screened)."""
        cache = inputs.pop("cache")
        if not self.screening:
            return self.model(**inputs, logits_to_keep=1, **{cache_kw(self.model): cache}).logits[:, -1:, :]
        return self.decoder(**inputs, **{cache_kw(self.decoder): cache}).last_hidden_state[:, -1:, :]

    def tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The greedy tokens of :meth:`hidden`'s outputs (batch, 1, ...)."""
        return self(hidden) if self.screening else hidden[:, -1, :].argmax(dim=-1)

    def next_tokens(self, **inputs: Any) -> torch.Tensor:
        """One forward pass of the model on ``inputs`` (ids, mask, positions, cache): the greedy next token of each row."""
        return self.tokens(self.hidden(**inputs))

    def full(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own output layer on ``hidden`` (batch, 1, hidden): logits as ``generate`` computes them."""
        return self.head(hidden)[:, -1, :]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.stats["steps"] += 1
        if not self.screening:
            return self.full(hidden).argmax(dim=-1)
        h = hidden[:, -1, :]
        approx = torch.nn.functional.linear(h.to(torch.bfloat16), self.bf16).float()
        h_norm = torch.linalg.vector_norm(h, dim=1, keepdim=True) * (1 + 1e-5)
        # output rounding to bfloat16: |A - acc| <= u16 / (1 - u16) |A| <= 2 u16 |A|
        err = h_norm * self.norms[None, :] * self.norm_factor + approx.abs() * (2 * _U_BF16) + 1e-30
        lower = (approx - err).amax(dim=1, keepdim=True)
        candidate = (approx + err) >= lower
        idx = candidate.any(dim=0).nonzero().flatten()
        if not torch.isfinite(approx).all() or idx.numel() > SCREEN_MAX_CANDIDATES * self.weight.shape[0]:
            return self._full_argmax(hidden)
        self.stats["candidates"] += int(idx.numel())
        w = self.weight.index_select(0, idx)
        exact = torch.nn.functional.linear(h, w)
        # float32 error bound of each candidate logit, for this product and for generate's
        delta = torch.nn.functional.linear(h.abs(), w.abs()) * (self.gamma * 1.01)
        mine = candidate[:, idx]
        scores = exact.masked_fill(~mine, float("-inf"))
        best = scores.argmax(dim=1, keepdim=True)
        gap = scores.gather(1, best) - scores - 2 * (delta.gather(1, best) + delta)
        gap = gap.masked_fill(~mine, float("inf")).scatter(1, best, float("inf"))
        sure = (gap > 0).all(dim=1) & torch.isfinite(exact).all(dim=1)
        tokens = idx[best[:, 0]]
        if not bool(sure.all()):
            self.stats["full"] += 1
            unsure = (~sure).nonzero().flatten()
            tokens[unsure] = self._full_argmax(hidden[unsure]) if len(unsure) < len(h) else self._full_argmax(hidden)
        return tokens

    def _full_argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.full(hidden).argmax(dim=-1)


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def screenable(model: Any) -> bool:
    """True where the model's logits are exactly ``hidden @ W.T`` in float32 (see ``GreedyHead``)."""
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        getattr(config, "model_type", None) in _PLAIN_HEAD_TYPES
        and getattr(config, "final_logit_softcapping", None) is None
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
        and head.weight.dtype == torch.float32
        and head.weight.device.type == "cpu"
        and getattr(model, "base_model", model) is not model
    )


def greedy_head(lm: Any, *, screen: bool | None = None) -> GreedyHead:
    """The :class:`GreedyHead` of ``lm`` (a :class:`~layerswap.evaluate.runner.LoadedModel`), built once (about a second for a 262k vocabulary) and
    reused while the model's output weights are unchanged."""
    head = lm.__dict__.get("_greedy_head")
    if head is None or not head.fresh(lm.model) or (screen is not None and head.screening != (screen and screenable(lm.model))):
        head = GreedyHead(lm.model, screen=screen)
        lm.__dict__["_greedy_head"] = head
    return head
