"""Representation change: ``1 - linear CKA`` between two models' hidden states on the same tokens.

Linear CKA (Kornblith et al., 2019) compares two sets of hidden states of the same ``n`` tokens
(``X``, ``Y``, columns centred) by ``||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)``: 1 when one is a
rotation and scaling of the other, lower as the geometry differs. Each model keeps, per data set,
layer and module, the rows of the sampled tokens (``cka_tokens``, the same positions for every
model) and, once it has seen every data set, only their Gram matrix ``X X^T`` (``n x n``), so any
pair (base vs each expert, expert vs expert) is compared afterwards without holding two models.

Cells: the language expert's ``1 - CKA`` against the base on the language data, the math expert's
on the math data, per layer and module (``attn``, ``mlp``: the sublayer outputs; ``residual``: the
layer's output, which carries every change below it).
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd
import torch

from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, cells_frame, finish, register
from layerswap.analysis.lenses.forward import Batch

MODULES = ("attn", "mlp", "residual")


class CkaProbe:
    name = "cka"

    def __init__(self, models: list[str], data: list[str]) -> None:
        self.models, self.data = models, data
        self.rows: dict[tuple, list[torch.Tensor]] = {}
        self.grams: dict[tuple, torch.Tensor] = {}

    def wants(self, model: str, data: str) -> frozenset[str]:
        return frozenset(MODULES) if model in self.models and data in self.data else frozenset()

    def update(self, model: str, data: str, where: str, layer: int, hidden: torch.Tensor, batch: Batch) -> None:
        if len(batch.sample):
            rows = hidden.reshape(-1, hidden.shape[-1])[batch.sample.to(hidden.device)]
            self.rows.setdefault((model, data, layer, where), []).append(rows.float().cpu())

    def end_model(self, model: str) -> None:
        for key in [k for k in self.rows if k[0] == model]:
            x = torch.cat(self.rows.pop(key)).double()
            x -= x.mean(dim=0, keepdim=True)
            self.grams[key] = x @ x.T


def linear_cka(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741 - the kernels' usual names
    """Linear CKA from the Gram matrices of centred features (``<K, L>_F / (||K||_F ||L||_F)``)."""
    den = float(torch.linalg.norm(k) * torch.linalg.norm(l))
    return float((k * l).sum()) / den if den > 0 else float("nan")


def cka_table(probe: CkaProbe) -> pd.DataFrame:
    """``model_a, model_b, data, layer, module, cka, tokens`` for base vs each expert and each expert pair."""
    rows = []
    pairs = [("base", m) for m in probe.models if m != "base"] + list(combinations([m for m in probe.models if m != "base"], 2))
    layers = sorted({k[2] for k in probe.grams})
    for a, b in pairs:
        for data in probe.data:
            for layer in layers:
                for module in MODULES:
                    ka, kb = probe.grams.get((a, data, layer, module)), probe.grams.get((b, data, layer, module))
                    if ka is not None and kb is not None:
                        rows.append(
                            {
                                "model_a": a,
                                "model_b": b,
                                "data": data,
                                "layer": layer,
                                "module": module,
                                "cka": linear_cka(ka, kb),
                                "tokens": ka.shape[0],
                            }
                        )
    return pd.DataFrame(rows, columns=["model_a", "model_b", "data", "layer", "module", "cka", "tokens"])


def make_probe(ctx: LensContext) -> CkaProbe:
    return CkaProbe(["base", *ctx.experts], list(ctx.texts))


def run(ctx: LensContext) -> LensResult:
    probe: CkaProbe = ctx.shared["forward"].probe("cka")
    table = cka_table(probe)
    rows = []
    for role in ("lang", "math"):
        expert = ctx.roles[role]
        mine = table[(table["model_a"] == "base") & (table["model_b"] == expert) & (table["data"] == role)]
        rows += [{"expert": role, "layer": r.layer, "module": r.module, "value": 1.0 - r.cka} for r in mine.itertuples()]
    return finish(
        "cka",
        cells_frame(rows),
        ctx,
        ctx.base.num_layers,
        tables={"cka": table},
        value="1 - linear CKA against the base (lang expert on lang data, math expert on math data)",
        info={"tokens_per_data": {d: int(t.sampled) for d, t in ctx.shared["forward"].data.items() if d in ctx.texts}},
    )


register(
    Lens(
        "cka",
        run,
        "1 - linear CKA of hidden states, base vs each expert and expert vs expert",
        needs_data=True,
        min_examples=2,
        forward=True,
        probe=make_probe,
    )
)
