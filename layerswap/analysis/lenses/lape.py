"""Language neurons: per layer, the MLP neurons one language switches on and the others do not (LAPE).

Language activation probability entropy (Tang et al., ACL 2024; used on merges in arXiv 2507.22608
and 2510.13580): run the base over ``lape_sentences`` FLORES sentences of every language present
in the data folder and count, per MLP neuron, how often it is active (its gate pre-activation is
positive, i.e. ``act(gate) > 0`` for SiLU and GELU) in each language: ``p(l)``. Neurons active
somewhere (max ``p`` at least the 95th percentile of all ``p``) whose ``p`` normalised over languages
has the lowest entropy (the bottom ``lape_ratio``, 1% of all neurons) are language-specific, to each
language where their ``p`` reaches that percentile. It needs at least :data:`MIN_LANGUAGES` FLORES
languages and gated MLPs (``gate_proj``); otherwise the lens says why and is skipped.

Each expert's change per neuron is read from the weights (no forward pass): the squared delta of the
neuron's ``gate_proj`` and ``up_proj`` rows and ``down_proj`` column; its top ``lape_top``% neurons
over all layers are the ones it changed most, and ``lape_changed.csv`` counts how many of them are
language-specific. Cells: ``lang`` = the target language's specific neurons per layer, ``math`` =
the math expert's most-changed neurons per layer (module ``mlp``): the rule gives the language
expert the layers that hold the target language and that the math expert left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, cells_frame, finish, register
from layerswap.analysis.lenses.forward import Batch, has_gate
from layerswap.io import DeltaView, language

MIN_LANGUAGES = 3


def flores_languages(ctx: LensContext) -> dict[str, Path]:
    """FLORES devtest files in the data folder, by layerswap language code."""
    from layerswap.errors import DataError
    from layerswap.io.data_files import resolve_data_dir

    folder = resolve_data_dir(ctx.data_dir)
    found: dict[str, Path] = {}
    devtest = Path(folder) / "flores200" / "devtest" if folder else None
    for path in sorted(devtest.glob("*.devtest")) if devtest and devtest.is_dir() else []:
        try:
            found[language(path.stem).code] = path
        except DataError:
            continue
    return found


def why_skipped(ctx: LensContext) -> str | None:
    """The reason LAPE cannot run here, or None (checked before any model loads)."""
    found = flores_languages(ctx)
    if len(found) < MIN_LANGUAGES:
        return f"lape skipped: it needs FLORES devtest text of at least {MIN_LANGUAGES} languages in the data folder's flores200/devtest, found {len(found)}"
    if not has_gate(ctx.base):
        return "lape skipped: the base's MLPs have no gate_proj, whose sign LAPE counts"
    return None


class LapeProbe:
    name = "lape"

    def __init__(self, texts: dict[str, list[str]]) -> None:
        self.extra = {f"flores:{code}": t for code, t in texts.items()}
        self.active: dict[tuple[str, int], torch.Tensor] = {}
        self.tokens: dict[str, int] = {}

    def wants(self, model: str, data: str) -> frozenset[str]:
        return frozenset({"gate"}) if model == "base" and data in self.extra else frozenset()

    def update(self, model: str, data: str, where: str, layer: int, hidden: torch.Tensor, batch: Batch) -> None:
        mask = batch.attention_mask.to(hidden.device).bool()
        counts = ((hidden > 0) & mask[..., None]).sum(dim=(0, 1)).cpu()
        key = (data, layer)
        self.active[key] = self.active.get(key, torch.zeros_like(counts)) + counts
        if layer == 0:
            self.tokens[data] = self.tokens.get(data, 0) + int(mask.sum())

    def end_model(self, model: str) -> None:
        """Nothing to fold: the counts are already small."""


def language_specific(probe: LapeProbe, num_layers: int, ratio: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Languages, activation probabilities ``p[language, layer, neuron]`` and the specific mask (same shape)."""
    langs = sorted(probe.extra)
    p = np.stack(
        [np.stack([probe.active[(d, layer)].numpy() / max(1, probe.tokens[d]) for layer in range(num_layers)]) for d in langs]
    )
    threshold = np.quantile(p, 0.95)
    norm = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
    entropy = -(norm * np.log(np.where(norm > 0, norm, 1))).sum(axis=0)  # (layer, neuron)
    entropy = np.where(p.max(axis=0) >= threshold, entropy, np.inf)  # only neurons active somewhere
    k = max(1, int(round(ratio * entropy.size)))
    cut = np.sort(entropy, axis=None)[k - 1]
    chosen = np.isfinite(entropy) & (entropy <= cut)
    return [d.split(":", 1)[1] for d in langs], p, chosen[None] & (p >= threshold)


def neuron_change(view: DeltaView, num_layers: int) -> np.ndarray:
    """Per layer and neuron, the squared delta of its gate and up rows and its down column."""
    out: list[np.ndarray | None] = [None] * num_layers
    arch = view.base.architecture
    for name in view.names():
        role = arch.classify(name)
        if role.layer is None or role.param != "weight" or role.module not in ("gate_proj", "up_proj", "down_proj"):
            continue
        delta = view.delta(name)
        if delta is None:
            continue
        per_neuron = (delta.square().sum(dim=0) if role.module == "down_proj" else delta.square().sum(dim=1)).numpy()
        out[role.layer] = per_neuron if out[role.layer] is None else out[role.layer] + per_neuron
    width = next((o.shape[0] for o in out if o is not None), 0)
    return np.stack([o if o is not None else np.zeros(width) for o in out])


def make_probe(ctx: LensContext) -> LapeProbe:
    from layerswap.io.data_files import read_lines

    count = int(ctx.options["lape_sentences"])
    return LapeProbe({code: read_lines(path)[:count] for code, path in flores_languages(ctx).items()})


def run(ctx: LensContext) -> LensResult:
    probe: LapeProbe = ctx.shared["forward"].probe("lape")
    n = ctx.base.num_layers
    langs, p, specific = language_specific(probe, n, float(ctx.options.get("lape_ratio", 0.01)))
    any_lang = specific.any(axis=0)  # (layer, neuron)
    rows = [
        {"layer": layer, "language": code, "specific": int(specific[i, layer].sum())}
        for layer in range(n)
        for i, code in enumerate(langs)
    ]
    rows += [{"layer": layer, "language": "any", "specific": int(any_lang[layer].sum())} for layer in range(n)]
    table = pd.DataFrame(rows).assign(neurons=p.shape[2])
    target = ctx.target.code if ctx.target else None
    target_mask = specific[langs.index(target)] if target in langs else np.zeros_like(any_lang)
    top = float(ctx.options.get("lape_top", 5.0))
    changed_rows, most_changed = [], {}
    for name, ckpt in ctx.experts.items():
        change = neuron_change(DeltaView(ckpt, ctx.base, label=f"expert {name}"), n)
        k = max(1, int(np.ceil(top / 100 * change.size)))
        cut = np.sort(change, axis=None)[-k]
        most_changed[name] = (change >= cut) & (change > 0)
        for layer in range(n):
            mc = most_changed[name][layer]
            changed_rows.append(
                {
                    "expert": name,
                    "layer": layer,
                    "top_changed": int(mc.sum()),
                    "specific_changed": int((mc & any_lang[layer]).sum()),
                    "target_changed": int((mc & target_mask[layer]).sum()),
                }
            )
    cells = [{"expert": "lang", "layer": layer, "module": "mlp", "value": float(target_mask[layer].sum())} for layer in range(n)]
    math_name = ctx.roles["math"] if ctx.roles else None
    if math_name in most_changed:
        cells += [
            {"expert": "math", "layer": layer, "module": "mlp", "value": float(most_changed[math_name][layer].sum())}
            for layer in range(n)
        ]
    warnings = (
        [] if target in langs else [f"the target language {target} has no FLORES text here: no lang cells, no recommendation"]
    )
    return finish(
        "lape",
        cells_frame(cells),
        ctx,
        n,
        tables={"lape": table, "lape_changed": pd.DataFrame(changed_rows)},
        value=f"lang: the target language's specific neurons; math: the math expert's top-{top:g}% changed neurons (counts)",
        info={"languages": langs, "tokens": {d.split(":", 1)[1]: t for d, t in probe.tokens.items()}, "top_changed_percent": top},
        warnings=warnings,
    )


register(
    Lens(
        "lape",
        run,
        "language-specific MLP neurons (LAPE over the FLORES languages) and the experts' most-changed neurons",
        needs_target=True,
        forward=True,
        probe=make_probe,
        skip=why_skipped,
    )
)
