"""``run_lenses``: check every input, run the chosen lenses (the activation ones in one shared pass), write ``DIR/<lens>/``.

Everything a lens could refuse is checked before any model loads: the lens names, the base (a full
model, not an adapter), each expert against it, the data specs and their number of examples, the
tokenizers (the activation lenses feed every model the base tokenizer's ids), the target language.
A lens that cannot run here (LAPE without enough FLORES languages) says why and is skipped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from layerswap.analysis.boundaries import BoundaryRule
from layerswap.analysis.lenses.base import Lens, LensContext, LensResult, get_lens, named_roles
from layerswap.errors import ConfigError, DataError, IncompatibleModelsError
from layerswap.io import (
    AtomicDir,
    Checkpoint,
    DeltaView,
    Language,
    ModelFolder,
    language,
    open_checkpoint,
    open_model,
    prepare_output_dir,
    write_provenance,
)
from layerswap.io.swap_geometry import SwapGeometry

#: Defaults of the activation lenses' knobs (``options``).
DEFAULT_OPTIONS = {"cka_tokens": 256, "logit_tokens": None, "lape_sentences": 16, "lape_ratio": 0.01, "lape_top": 5.0}


@dataclass
class LensRun:
    """The results of the lenses, by name, and where they were written."""

    results: dict[str, LensResult]
    out: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def recommendations(self) -> dict[str, dict[str, Any] | None]:
        return {name: r.boundaries for name, r in self.results.items()}

    def table(self) -> pd.DataFrame:
        """One row per lens: its recommended geometry, whether it separates the experts, or why it was skipped."""
        rows = []
        for name, r in self.results.items():
            bd = r.boundaries or {}
            rows.append(
                {
                    "lens": name,
                    "separation": bd.get("separation", "skipped" if r.skipped else "n/a"),
                    "basis": bd.get("basis"),
                    "bottom": bd.get("bottom"),
                    "top": bd.get("top"),
                    "transition": bd.get("transition"),
                    "reason": r.skipped
                    or bd.get("reason")
                    or "; ".join(r.warnings)
                    or "no recommendation: it needs a language and a math role",
                }
            )
        return pd.DataFrame(rows, columns=["lens", "separation", "basis", "bottom", "top", "transition", "reason"])


def lens_recommendations(folder: str | os.PathLike[str]) -> dict[str, SwapGeometry]:
    """Each lens's recommended swap geometry from a ``--lens`` output folder (lenses without one are absent)."""
    out: dict[str, SwapGeometry] = {}
    for path in sorted(Path(folder).glob("*/boundaries.yaml")):
        bd = yaml.safe_load(path.read_text(encoding="utf-8"))
        out[path.parent.name] = SwapGeometry(int(bd["bottom"]), int(bd["top"]), int(bd["transition"]))
    return out


def parse_lenses(names: str | Sequence[str]) -> list[Lens]:
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ConfigError("no lens given: pass --lens with one or more of deltas, importance, cka, logit, lape, grad")
    if len(set(items)) != len(items):
        raise ConfigError(f"--lens names a lens twice ({','.join(items)}): name each once")
    return [get_lens(n) for n in items]


def _target(explicit: str | None, roles: dict[str, str] | None, data: Mapping[str, str]) -> Language | None:
    if explicit:
        return language(explicit)
    candidates = [roles["lang"]] if roles else []
    spec = data.get("lang", "")
    candidates.append(spec.split("?")[0].split(":")[-1])
    for c in candidates:
        try:
            return language(c)
        except DataError:
            continue
    return None


def _check_tokenizers(base: ModelFolder, experts: Mapping[str, Checkpoint]) -> None:
    """Every full expert with a tokenizer of its own must have the base's vocabulary and special tokens."""
    from layerswap.analysis.lenses.forward import load_tokenizer

    files = ("tokenizer.json", "tokenizer.model", "vocab.json")
    own = {n: e for n, e in experts.items() if isinstance(e, ModelFolder) and any((Path(e.path) / f).exists() for f in files)}
    if not own:
        return
    ref = load_tokenizer(base.path)
    for name, expert in own.items():
        tok = load_tokenizer(expert.path)
        if tok.get_vocab() != ref.get_vocab() or tok.all_special_ids != ref.all_special_ids:
            raise IncompatibleModelsError(
                f"expert {name} ({expert.path}) has another tokenizer than base {base.path}: the activation lenses compare models on the same tokens; use experts fine-tuned from this base"
            )


def run_lenses(
    base: str | os.PathLike[str] | ModelFolder,
    experts: Mapping[str, str | os.PathLike[str] | Checkpoint],
    lenses: str | Sequence[str],
    *,
    data: Mapping[str, str] | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    examples: int = 16,
    batch_size: int = 4,
    seq_len: int = 64,
    device: str = "cpu",
    top_k: Sequence[float] = (1.0, 5.0),
    lang_expert: str | None = None,
    math_expert: str | None = None,
    target_lang: str | None = None,
    rule: BoundaryRule | None = None,
    plots: bool = True,
    options: Mapping[str, Any] | None = None,
) -> LensRun:
    """Run the named lenses on the base, the experts and each task's data; with ``out``, write ``out/<lens>/`` for each."""
    from layerswap.analysis.core import resolve_roles
    from layerswap.analysis.importance import load_texts
    from layerswap.analysis.overlap import check_top_k

    chosen = parse_lenses(lenses)
    data = dict(data or {})
    for option, value in (("examples", examples), ("batch-size", batch_size), ("seq-len", seq_len)):
        if value < 1:
            raise ConfigError(f"--{option} must be at least 1, got {value}")
    unknown = set(options or {}) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown lens option {sorted(unknown)[0]!r}: the options are {', '.join(DEFAULT_OPTIONS)}")
    check_top_k(top_k)
    if out is not None:
        out = prepare_output_dir(out, overwrite, inputs=[base, experts, data, data_dir])
    base_folder = base if isinstance(base, ModelFolder) else open_model(base)
    opened = {name: open_checkpoint(c) if isinstance(c, (str, os.PathLike)) else c for name, c in experts.items()}
    for name, ckpt in opened.items():
        DeltaView(ckpt, base_folder, label=f"expert {name}")  # same layers, names and shapes as the base
    needs_experts = [lens.name for lens in chosen if lens.needs_experts]
    if needs_experts and not opened:
        raise ConfigError(f"the {needs_experts[0]} lens reads the experts: pass --expert lang=PATH --expert math=PATH")
    roles = resolve_roles(list(opened), lang_expert, math_expert) if len(opened) >= 2 else None
    if roles is None and [n for n in needs_experts if n != "deltas"]:
        named_roles(opened, "expert")  # raises: which is which
    needs_data = [lens for lens in chosen if lens.needs_data]
    texts: dict[str, list[str]] = {}
    if needs_data:
        if not data:
            raise ConfigError(
                f"the {needs_data[0].name} lens reads each task's data: pass --data math=gsm8k --data lang=ntrex:sw"
            )
        if any(lens.name != "importance" for lens in needs_data):
            data_roles = named_roles(data, "data set")
            data = {"lang": data[data_roles["lang"]], "math": data[data_roles["math"]]}
        for name, spec in data.items():
            texts[name] = load_texts(spec, data_dir=data_dir, limit=examples)
            need = max(lens.min_examples for lens in needs_data)
            if len(texts[name]) < need:
                lens_name = next(lens.name for lens in needs_data if lens.min_examples == need)
                raise DataError(
                    f"data {name} ({spec}) has {len(texts[name])} example(s); the {lens_name} lens needs at least {need}: pass more data or --examples"
                )
    target = _target(target_lang, roles, data)
    if target is None and any(lens.needs_target for lens in chosen):
        lens_name = next(lens.name for lens in chosen if lens.needs_target)
        raise ConfigError(
            f"the {lens_name} lens needs the target language: pass --target-lang (e.g. sw), or name the language expert or data by it"
        )
    forward = [lens for lens in chosen if lens.forward]
    if forward:
        _check_tokenizers(base_folder, opened)
    ctx = LensContext(
        base_folder,
        opened,
        roles,
        data,
        texts,
        target,
        data_dir,
        examples,
        batch_size,
        seq_len,
        device,
        tuple(float(k) for k in top_k),
        rule or BoundaryRule(),
        {**DEFAULT_OPTIONS, **(options or {})},
    )
    skipped = {lens.name: reason for lens in chosen if lens.skip and (reason := lens.skip(ctx))}
    for reason in skipped.values():
        warnings.warn(reason, stacklevel=2)
    seconds: dict[str, Any] = {}
    active_forward = [lens for lens in forward if lens.name not in skipped]
    if active_forward:
        started = time.perf_counter()
        ctx.shared["forward"] = _forward_pass(ctx, active_forward)
        seconds["forward"] = round(time.perf_counter() - started, 2)
        seconds["forward_per_model"] = ctx.shared["forward"].seconds
    results: dict[str, LensResult] = {}
    for lens in chosen:
        if lens.name in skipped:
            results[lens.name] = LensResult(lens.name, pd.DataFrame(), pd.DataFrame(), None, None, skipped=skipped[lens.name])
            continue
        started = time.perf_counter()
        results[lens.name] = lens.run(ctx)
        seconds[lens.name] = round(time.perf_counter() - started, 2)
    run = LensRun(results, info={"seconds": seconds, "target": target.code if target else None, "options": dict(ctx.options)})
    if out is not None:
        atomic = AtomicDir(out, overwrite=overwrite, inputs=[base, experts, data, data_dir])
        with atomic as tmp:
            for name, result in results.items():
                result.write_into(tmp / name, plots_too=plots)
            table = run.table()
            table.to_csv(tmp / "lenses.csv", index=False)
            (tmp / "summary.md").write_text(_summary(table), encoding="utf-8")
            write_provenance(
                tmp,
                {
                    "kind": "analysis:lenses",
                    "lenses": list(results),
                    "base": str(base_folder.path),
                    "experts": {n: str(c.path) for n, c in opened.items()},
                    "data": data,
                    "roles": roles,
                    "examples": examples,
                    "batch_size": batch_size,
                    "seq_len": seq_len,
                    "device": device,
                    **run.info,
                },
            )
        run.out = atomic.out
    return run


def _forward_pass(ctx: LensContext, lenses: list[Lens]) -> Any:
    """Build every activation lens's probe and run the one pass per model they share."""
    import torch

    from layerswap.analysis.lenses.forward import Pass, load_tokenizer, model_loader, tokenize

    ctx.shared["tokenizer"] = tokenizer = load_tokenizer(ctx.base.path)
    probes = [lens.probe(ctx) for lens in lenses]
    opts = ctx.options
    sets = {
        role: tokenize(
            role,
            t,
            tokenizer,
            batch_size=ctx.batch_size,
            seq_len=ctx.seq_len,
            sample=int(opts["cka_tokens"]),
            logit=None if opts["logit_tokens"] is None else int(opts["logit_tokens"]),
            decodes=ctx.base.num_layers + 1,
        )
        for role, t in ctx.texts.items()
    }
    for probe in probes:
        for name, extra in getattr(probe, "extra", {}).items():
            sets[name] = tokenize(name, extra, tokenizer, batch_size=ctx.batch_size, seq_len=ctx.seq_len, sample=0, logit=0)
    device = ctx.device
    if device == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        device = "auto" if count > 1 else ("cuda" if count else "cpu")
    run = Pass(probes, sets)
    for probe in probes:
        if hasattr(probe, "forward"):
            probe.forward = run
    models = {"base": model_loader(ctx.base, None, device)}
    models.update({name: model_loader(ctx.base, ckpt, device) for name, ckpt in ctx.experts.items()})
    run.run(models)
    return run


def _summary(table: pd.DataFrame) -> str:
    lines = [
        "# Lenses",
        "",
        "Each lens's recommendation by the same boundary rule (`<lens>/boundaries.yaml`), or why it has none.",
        "",
    ]
    lines.append("| lens | separation | basis | bottom | top | transition | reason |")
    lines.append("|---|---|---|---:|---:|---:|---|")
    for r in table.itertuples():
        cells = [
            r.lens,
            r.separation,
            "" if pd.isna(r.basis) else str(r.basis),
            *("" if pd.isna(v) else str(int(v)) for v in (r.bottom, r.top, r.transition)),
            str(r.reason).replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
