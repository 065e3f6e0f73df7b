"""The weight lenses: the experts' deltas (``deltas``) and the base's diagonal Fisher (``importance``).

Both are the analyses ``layerswap analyze`` and ``layerswap importance`` have always run, registered
unchanged: their folder is today's analysis folder, plus ``cells.csv``.
"""

from __future__ import annotations

from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, from_analysis, register


def run_deltas(ctx: LensContext) -> LensResult:
    from layerswap.analysis.core import analyze

    roles = ctx.roles or {}
    analysis = analyze(
        ctx.base, ctx.experts, top_k=ctx.top_k, lang_expert=roles.get("lang"), math_expert=roles.get("math"), rule=ctx.rule
    )
    return from_analysis("deltas", analysis)


def run_importance(ctx: LensContext) -> LensResult:
    from layerswap.analysis.importance import importance

    analysis = importance(
        ctx.base,
        ctx.data,
        examples=ctx.examples,
        batch_size=ctx.batch_size,
        seq_len=ctx.seq_len,
        data_dir=ctx.data_dir,
        top_k=ctx.top_k,
        device=ctx.device,
        rule=ctx.rule,
    )
    return from_analysis("importance", analysis)


register(Lens("deltas", run_deltas, "the experts' weight deltas: magnitude, top-k% overlap, cosine (no forward pass)"))
register(
    Lens(
        "importance",
        run_importance,
        "the base's diagonal Fisher on each task's data (one backward pass per batch)",
        needs_experts=False,
        needs_data=True,
    )
)
