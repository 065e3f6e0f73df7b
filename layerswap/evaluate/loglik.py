"""Log-likelihood tasks: FLORES-200 bits per byte, SIB-200 label accuracy, and the sweep proxy.

All three need one forward pass per example (no generation), batched with right padding. Only
the positions that are scored go through the output layer, in chunks: with a 262k vocabulary the
output layer is most of the cost and its full logits would not fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from layerswap.evaluate.runner import LoadedModel, encode
from layerswap.progress import bar

HEAD_CHUNK = 512  # positions per output-layer chunk


@dataclass(frozen=True)
class Scored:
    """Sum of log-probabilities (nats) of the scored tokens, their count, and whether each was
    the greedy (argmax) token."""

    logprob: float
    n_tokens: int
    greedy: bool


def _head(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    logits = lm.model.get_output_embeddings()(hidden).float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _hidden(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (before the output layer), or None when the model hides its decoder."""
    decoder = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else None
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.inference_mode()
def score_tokens(lm: LoadedModel, sequences: Sequence[tuple[list[int], int]], *, batch_size: int = 8, desc: str = "score") -> list[Scored]:
    """Score the last ``n`` tokens of each ``(token ids, n)``, batched with right padding."""
    device = lm.device
    pad = lm.tokenizer.pad_token_id
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    results: list[Scored | None] = [None] * len(sequences)
    pbar = bar(desc=desc, total=len(sequences), unit="ex")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(sequences[i][0]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                seq = sequences[i][0]
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[r, : len(seq)] = 1
            hidden = _hidden(lm, ids.to(device), mask.to(device))
            for r, i in enumerate(rows):
                seq, n = sequences[i]
                n = min(n, len(seq) - 1)
                positions = torch.arange(len(seq) - n - 1, len(seq) - 1, device=device)  # predict the last n tokens
                targets = torch.tensor(seq[len(seq) - n :], dtype=torch.long, device=device)
                total, greedy = 0.0, True
                for c in range(0, n, HEAD_CHUNK):
                    logp = torch.log_softmax(_head(lm, hidden[r, positions[c : c + HEAD_CHUNK]]), dim=-1)
                    tgt = targets[c : c + HEAD_CHUNK]
                    total += float(logp.gather(-1, tgt[:, None]).sum())
                    greedy = greedy and bool((logp.argmax(-1) == tgt).all())
                results[i] = Scored(total, n, greedy)
            pbar.update(len(rows))
    finally:
        pbar.close()
    return [r for r in results if r is not None]


def continuation_tokens(lm: LoadedModel, context: str, continuation: str) -> tuple[list[int], int]:
    """lm-eval's split: encode ``context + continuation`` whole, score the tokens past the context."""
    whole = encode(lm.tokenizer, context + continuation)
    ctx = encode(lm.tokenizer, context)
    n = max(1, len(whole) - len(ctx))
    return whole, n


def loglikelihood(lm: LoadedModel, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8, desc: str = "loglik") -> list[Scored]:
    """``log p(continuation | context)`` for each pair."""
    return score_tokens(lm, [continuation_tokens(lm, c, x) for c, x in pairs], batch_size=batch_size, desc=desc)


def start_token(lm: LoadedModel) -> int:
    """The token every text is scored after (BOS, else EOS, as lm-eval's rolling loglikelihood)."""
    tok = lm.tokenizer
    for value in (tok.bos_token_id, tok.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither BOS nor EOS to start a text")


def text_tokens(lm: LoadedModel, text: str, max_tokens: int = 2048) -> tuple[list[int], int]:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens - 1]
    return [start_token(lm), *ids], len(ids)


def bits_per_byte(total_logprob_nats: float, n_bytes: int) -> float:
    """``-sum log p / (ln 2 * UTF-8 bytes)``: tokenizer independent, so models with different
    tokenizers compare."""
    return -total_logprob_nats / (math.log(2) * n_bytes) if n_bytes else float("nan")


def normalise_quotes(line: str) -> str:
    """Undo CSV-style quoting (``"a ""b"" c"`` -> ``a "b" c``) found on a few FLORES lines."""
    line = line.strip()
    while len(line) >= 2 and line.startswith('"') and line.endswith('"') and '""' in line:
        line = line[1:-1].replace('""', '"')
    return line


def summarise_logprobs(scored: Sequence[Scored]) -> dict[str, Any]:
    n = len(scored)
    tokens = sum(s.n_tokens for s in scored)
    return {
        "n": n,
        "gold_logprob": sum(s.logprob for s in scored) / n if n else float("nan"),
        "gold_logprob_per_token": sum(s.logprob for s in scored) / tokens if tokens else float("nan"),
        "gold_greedy": sum(s.greedy for s in scored) / n if n else float("nan"),
    }
