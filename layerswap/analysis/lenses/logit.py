"""The logit lens: each layer's hidden state decoded through the final norm and the output layer.

At ``logit_tokens`` sampled positions of each data set (the same for every model), every layer's
output (and the embeddings, layer -1) is decoded as if it were the last one (nostalgebraist, 2020;
for languages: Wendler et al., 2024, LinguaMap arXiv 2601.20009): the probability of the gold next
token, and whether the top-1 token belongs to the target language. For a target written in its own
script (Bengali, Telugu, Thai, ...) "belongs" means the token's text holds a letter of that script;
for a Latin-script target (Swahili) a script says nothing, so it means the token occurs in the
language data's tokens and not in English text (FLORES ``eng_Latn`` where present, else the math
data): ``logit.csv``'s ``target_set`` column says which.

Cells: where an expert changed what each layer adds to the gold token's log-probability,
``|(lp_e(l) - lp_e(l-1)) - (lp_base(l) - lp_base(l-1))|``, the language expert on the language
data and the math expert on the math data (module ``residual``).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pandas as pd
import torch

from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, cells_frame, finish, register
from layerswap.analysis.lenses.forward import Batch, Pass

#: Unicode character-name prefixes of each FLORES script code other than Latin.
SCRIPTS = {
    "Beng": ("BENGALI",),
    "Telu": ("TELUGU",),
    "Thai": ("THAI",),
    "Cyrl": ("CYRILLIC",),
    "Jpan": ("HIRAGANA", "KATAKANA", "CJK"),
    "Hans": ("CJK",),
    "Hant": ("CJK",),
    "Arab": ("ARABIC",),
    "Deva": ("DEVANAGARI",),
}


def target_tokens(tokenizer, ctx: LensContext) -> tuple[torch.Tensor, str]:  # noqa: ANN001
    """A boolean mask over the vocabulary of the target language's tokens, and what it means."""
    flores = ctx.target.flores or ""
    script = flores.split("_")[-1]
    size = len(tokenizer)
    mask = torch.zeros(size, dtype=torch.bool)
    if script in SCRIPTS:
        prefixes = SCRIPTS[script]
        for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(size)])):
            mask[i] = any(ch.isalpha() and unicodedata.name(ch, "").startswith(prefixes) for ch in text)
        return mask, f"script {script}"
    english = _english_texts(ctx)
    lang_ids = {t for ids in tokenizer(ctx.texts["lang"], add_special_tokens=False)["input_ids"] for t in ids}
    eng_ids = {t for ids in tokenizer(english[0], add_special_tokens=False)["input_ids"] for t in ids}
    for t in lang_ids - eng_ids:
        mask[t] = True
    return mask, f"vocabulary: tokens of the lang data absent from {english[1]}"


def _english_texts(ctx: LensContext) -> tuple[list[str], str]:
    from layerswap.io.data_files import read_lines, resolve_data_dir

    folder = resolve_data_dir(ctx.data_dir)
    eng = Path(folder) / "flores200" / "devtest" / "eng_Latn.devtest" if folder else None
    if eng is not None and eng.is_file():
        return read_lines(eng)[:200], "200 English FLORES sentences"
    return list(ctx.texts["math"]), "the math data"


class LogitProbe:
    """Keeps the sampled rows of every layer during the pass and decodes them together once the model is done.

    Decoding a few rows per batch would read the whole output layer (vocabulary x width) for each batch
    and layer; decoding all of a model's rows at once, ``CHUNK`` at a time, reads it a few times in all.
    """

    name = "logit"
    CHUNK = 256

    def __init__(self, models: list[str], data: list[str], target: torch.Tensor, forward: Pass | None = None) -> None:
        self.models, self.data, self.target = models, data, target
        self.forward = forward  # set by the runner: the current model's decoder
        self.rows: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.sums: dict[tuple, torch.Tensor] = {}

    def wants(self, model: str, data: str) -> frozenset[str]:
        return frozenset({"embed", "residual"}) if model in self.models and data in self.data else frozenset()

    def update(self, model: str, data: str, where: str, layer: int, hidden: torch.Tensor, batch: Batch) -> None:
        if len(batch.logit):
            rows = hidden.reshape(-1, hidden.shape[-1])[batch.logit.to(hidden.device)]
            self.rows.setdefault((model, data, layer), []).append((rows.clone(), batch.gold))

    def end_model(self, model: str) -> None:
        keys = [k for k in self.rows if k[0] == model]
        if not keys:
            return
        decode = self.forward.decoders[model]
        parts = [(i, r, g) for i, k in enumerate(keys) for r, g in self.rows.pop(k)]
        device = decode.head.weight.device
        rows = torch.cat([r.to(device) for _, r, _ in parts])
        gold = torch.cat([g for _, _, g in parts]).to(device)
        segment = torch.cat([torch.full((len(g),), i, dtype=torch.long) for i, _, g in parts])
        stats = torch.zeros(len(keys), 4, dtype=torch.float64)
        with torch.inference_mode():
            for start in range(0, len(rows), self.CHUNK):
                logp = torch.log_softmax(decode(rows[start : start + self.CHUNK]), dim=-1)
                lp = logp.gather(1, gold[start : start + self.CHUNK, None]).squeeze(1).double().cpu()
                top1 = logp.argmax(dim=-1).cpu()
                in_target = self.target[top1.clamp_max(len(self.target) - 1)] & (top1 < len(self.target))
                seg = segment[start : start + self.CHUNK]
                for col, values in enumerate((lp.exp(), lp, in_target.double(), torch.ones_like(lp))):
                    stats[:, col].index_add_(0, seg, values)
        for i, key in enumerate(keys):
            self.sums[key] = stats[i]


def logit_table(probe: LogitProbe, target_set: str) -> pd.DataFrame:
    rows = [
        {
            "model": m,
            "data": d,
            "layer": layer,
            "gold_prob": s[0] / s[3],
            "gold_logprob": s[1] / s[3],
            "top1_target": s[2] / s[3],
            "tokens": int(s[3]),
            "target_set": target_set,
        }
        for (m, d, layer), s in sorted(probe.sums.items(), key=lambda kv: (probe.models.index(kv[0][0]), kv[0][1], kv[0][2]))
        for s in [s.tolist()]
    ]
    return pd.DataFrame(
        rows, columns=["model", "data", "layer", "gold_prob", "gold_logprob", "top1_target", "tokens", "target_set"]
    )


def make_probe(ctx: LensContext) -> LogitProbe:
    mask, what = target_tokens(ctx.shared["tokenizer"], ctx)
    ctx.shared["logit_target_set"] = what
    return LogitProbe(["base", *ctx.experts], list(ctx.texts), mask)


def run(ctx: LensContext) -> LensResult:
    probe: LogitProbe = ctx.shared["forward"].probe("logit")
    table = logit_table(probe, ctx.shared["logit_target_set"])
    n = ctx.base.num_layers
    rows = []
    for role in ("lang", "math"):
        lp = {
            m: table[(table["model"] == m) & (table["data"] == role)].set_index("layer")["gold_logprob"]
            for m in ("base", ctx.roles[role])
        }
        if any(len(v) < n + 1 for v in lp.values()):
            continue
        for layer in range(n):
            gain = {m: v[layer] - v[layer - 1] for m, v in lp.items()}
            rows.append(
                {"expert": role, "layer": layer, "module": "residual", "value": abs(gain[ctx.roles[role]] - gain["base"])}
            )
    return finish(
        "logit",
        cells_frame(rows),
        ctx,
        n,
        tables={"logit": table},
        value="|change of each layer's gain in gold-token log-probability| against the base (logit lens)",
        info={"target_set": ctx.shared["logit_target_set"]},
    )


register(
    Lens(
        "logit",
        run,
        "logit lens: gold-token probability and target-language top-1 share per layer",
        needs_data=True,
        needs_target=True,
        forward=True,
        probe=make_probe,
    )
)
