"""The gradient lens: the base's mean gradient of the math loss against the language loss's.

Each task's mean gradient ``g = mean over batches of d loss / d p`` (one backward pass per batch on
the base, :func:`~layerswap.analysis.importance.gradient_moments`, the loop of ``importance``) is fed
to the delta analysis as if it were a delta (:class:`GradSource`): so ``cosine.csv`` is the cosine
between the math and the language mean gradients per layer x module, per layer and in total (do the
two losses pull the weights the same way?), ``overlap.csv`` the overlap of their top-k% gradient
coordinates (by ``|g|``, with sign agreement), and the cells the squared mean-gradient mass, whose
per-layer shares feed the boundary rule. Gradient alignment and subspace overlap are among the
better predictors of mergeability (arXiv 2601.22285).
"""

from __future__ import annotations

import time

import torch

from layerswap.analysis.core import build_analysis
from layerswap.analysis.deltas import FisherSource
from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, from_analysis, register
from layerswap.analysis.workspace import Workspace


class GradSource(FisherSource):
    """A task's mean gradient on the base (tensors in memory): signed values, read as they are."""

    signed = True

    def values(self, tensor: str, base_flat: torch.Tensor | None, ws: Workspace, key: str) -> torch.Tensor | None:
        if tensor not in self.fisher:
            return None
        g = self.fisher[tensor]
        return ws.buf(key, g.numel()).copy_(g.reshape(-1))

    def sample(self, tensor: str, spans) -> torch.Tensor | None:  # noqa: ANN001
        if tensor not in self.fisher:
            return None
        flat = self.fisher[tensor].reshape(-1)
        return torch.cat([flat[a:b] for a, b in spans]).float()


def run(ctx: LensContext) -> LensResult:
    from layerswap.analysis.importance import gradient_moments, load_model

    started = time.perf_counter()
    model, tokenizer = load_model(
        ctx.base,
        "cuda" if ctx.device == "auto" and torch.cuda.is_available() else ("cpu" if ctx.device == "auto" else ctx.device),
    )
    names = set(ctx.base.names())
    sources, batches = [], {}
    for role, texts in ctx.texts.items():
        mean, batches[role] = gradient_moments(
            model, tokenizer, texts, batch_size=ctx.batch_size, seq_len=ctx.seq_len, desc=f"gradient {role}", power=1
        )
        sources.append(GradSource({n: g.cpu() for n, g in mean.items() if n in names}, role))
        del mean
    del model
    seconds = round(time.perf_counter() - started, 2)
    analysis = build_analysis(
        "grad", ctx.base, sources, inputs=dict(ctx.data), top_k=ctx.top_k, lang="lang", math="math", rule=ctx.rule
    )
    analysis.info.update({"batches": batches, "seconds_gradients": seconds})
    return from_analysis("grad", analysis)


register(
    Lens(
        "grad",
        run,
        "cosine and top-k% overlap of the math and language losses' mean gradients on the base",
        needs_experts=False,
        needs_data=True,
    )
)
