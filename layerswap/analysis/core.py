"""``analyze``: experts against their base, streamed, into an :class:`Analysis` (and a folder).

One machinery serves deltas and importance: a list of :class:`ValueSource` (one per expert or
data set) goes through one pass (magnitudes, dots, and the counts for the exact top-k% sets,
``bands.BandStream``), or where that cannot decide, the multi-pass method (histogram, pass 2);
the boundary rule reads the per-layer shares. See ``docs/analysis.md``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from layerswap.analysis.bands import DEFAULT_BAND_CAP, BandStream, guess_bands
from layerswap.analysis.boundaries import BoundaryRule, contrast_table, recommend
from layerswap.analysis.delta_tables import cell_sumsq, cosine_table, deltas_table, layers_table
from layerswap.analysis.deltas import DeltaSource, ValueSource, run_pass1
from layerswap.analysis.overlap import (
    DEFAULT_BOUNDARY_CAP,
    HistogramObserver,
    check_top_k,
    histogram_pass,
    overlap_table,
    run_pass2,
    thresholds_table,
    topk_table,
)
from layerswap.analysis.report import Analysis
from layerswap.errors import ConfigError, DataError
from layerswap.io import Checkpoint, DeltaView, ModelFolder, language, open_checkpoint, open_model

_LANG_NAMES = {"lang", "language", "target"}


def _is_language_name(name: str) -> bool:
    if name.lower() in _LANG_NAMES:
        return True
    try:
        language(name.lower())
    except DataError:
        return False
    return True


def resolve_roles(names: Sequence[str], lang: str | None = None, math: str | None = None) -> dict[str, str] | None:
    """Which expert is the language one and which the math one (None when they cannot be told).

    Explicit names win; otherwise an expert called ``math`` and one called ``lang``/``language``
    or a language code (``sw``, ``swa``...) take the roles.
    """
    for role, value in (("lang", lang), ("math", math)):
        if value is not None and value not in names:
            raise ConfigError(
                f"--{role}-expert {value!r} is not one of the experts ({', '.join(names)}): pass one of their names"
            )
    lang = lang or next((n for n in names if _is_language_name(n) and n != math), None)
    math = math or next((n for n in names if n.lower() == "math" and n != lang), None)
    if lang is None or math is None or lang == math:
        return None
    return {"lang": lang, "math": math}


def build_analysis(
    kind: str,
    base: ModelFolder,
    sources: Sequence[ValueSource],
    *,
    inputs: Mapping[str, str],
    top_k: Sequence[float] = (1.0, 5.0),
    lang: str | None = None,
    math: str | None = None,
    rule: BoundaryRule | None = None,
    boundary_cap: int = DEFAULT_BOUNDARY_CAP,
    candidate_cap: int = DEFAULT_BAND_CAP,
) -> Analysis:
    """Stream ``sources`` (one pass, or the multi-pass method where needed) and assemble the tables and the recommendation.

    ``candidate_cap`` bounds the histogram cells the one-pass top-k keeps (0: always the multi-pass method);
    ``boundary_cap`` the values the multi-pass method keeps before it adds its refining pass.
    """
    top_k = check_top_k(top_k)
    names = [s.name for s in sources]
    roles = resolve_roles(names, lang, math)
    started = time.perf_counter()
    arch = base.architecture
    layer_tensors = [t for t in base.names() if arch.classify(t).layer is not None]
    population = sum(base.info(t).numel for t in layer_tensors)
    stream = histograms = None
    if candidate_cap > 0:  # one read: counts in a band around each threshold
        bands = guess_bands(base, sources, layer_tensors, top_k, population)
        stream = BandStream(names, top_k, population, bands, signed=all(s.signed for s in sources), cap=candidate_cap)
    else:  # asked for the multi-pass method: pass 1 takes its histograms
        histograms = HistogramObserver(base, names)
    observer = stream.observe if stream else histograms.observe
    p1 = run_pass1(base, sources, desc=f"{kind}: magnitudes and top-k", observer=observer)
    t1 = time.perf_counter()
    p2 = stream.finish(p1) if stream else None
    one_pass = p2 is not None
    if p2 is None:
        if histograms is not None:
            p1.hist = histograms.hist
        else:  # the one pass could not decide after all
            histogram_pass(base, sources, p1)
        p2 = run_pass2(base, sources, p1, top_k, boundary_cap=boundary_cap)
    t2 = time.perf_counter()
    notes = list(p1.warnings)
    for cut in p2.cuts.values():
        if cut.mode == "all_nonzero":
            notes.append(
                f"{cut.expert} changed only {cut.nonzero} transformer-layer parameters, fewer than its top-{cut.k_percent:g}% "
                f"({cut.k_count}): that set is all of them"
            )
    if len(sources) < 2:
        notes.append("one expert only: magnitudes and top-k locations are reported, overlap and cosine need two")
    elif roles is None:
        notes.append(
            f"cannot tell the language expert from the math expert among {', '.join(names)}: "
            "pass --lang-expert and --math-expert (or name them lang and math) for a boundary recommendation"
        )
    cells = cell_sumsq(p1)
    cells.attrs["kind"] = kind
    n = base.num_layers
    contrast = boundaries = None
    if roles is not None:
        contrast = contrast_table(cells, roles["lang"], roles["math"], n)
        boundaries = recommend(contrast, cells, roles["lang"], roles["math"], rule or BoundaryRule())
        boundaries = {"kind": kind} | boundaries
        if boundaries["separation"] == "none":
            notes.append(boundaries["reason"])
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return Analysis(
        kind=kind,
        base=str(base.path),
        experts=dict(inputs),
        num_layers=n,
        top_k=top_k,
        deltas=deltas_table(p1),
        layers=layers_table(p1),
        cells=cells,
        overlap=overlap_table(p1, p2, top_k),
        cosine=cosine_table(p1),
        topk=topk_table(p1, p2, top_k),
        thresholds=thresholds_table(p2),
        contrast=contrast,
        boundaries=boundaries,
        roles=roles,
        warnings=notes,
        info={
            "seconds": {"magnitudes": round(t1 - started, 2), "overlap": round(t2 - t1, 2)},
            "pass1_phases": p1.phases,  # wall and CPU seconds outside the layers and in them
            "top_k_method": "one pass" if one_pass else "multi-pass",
            "threshold_refined": p2.refined,
            "boundary_values_kept": p2.kept_boundary,
        },
    )


def analyze(
    base: str | os.PathLike[str] | ModelFolder,
    experts: Mapping[str, str | os.PathLike[str] | Checkpoint],
    *,
    top_k: Sequence[float] = (1.0, 5.0),
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    lang_expert: str | None = None,
    math_expert: str | None = None,
    rule: BoundaryRule | None = None,
    plots: bool = True,
    boundary_cap: int = DEFAULT_BOUNDARY_CAP,
    candidate_cap: int = DEFAULT_BAND_CAP,
) -> Analysis:
    """Analyse named experts (model folders or LoRA adapters) against ``base``.

    Returns an :class:`Analysis`; with ``out`` also writes its tables, ``boundaries.yaml``,
    figures and ``summary.md`` there (atomically). LoRA adapters are analysed through their
    ``B @ A`` deltas, never merged.
    """
    if not experts:
        raise ConfigError("no expert given: pass at least one --expert NAME=PATH")
    check_top_k(top_k)
    if out is not None:
        from layerswap.io import prepare_output_dir

        out = prepare_output_dir(out, overwrite, inputs=[base, experts])  # never an input, never someone else's folder
    base_folder = base if isinstance(base, ModelFolder) else open_model(base)
    sources: list[ValueSource] = []
    inputs: dict[str, str] = {}
    for name, ckpt in experts.items():
        opened = open_checkpoint(ckpt) if isinstance(ckpt, (str, os.PathLike)) else ckpt
        sources.append(DeltaSource(DeltaView(opened, base_folder, label=f"expert {name}"), name=name))
        inputs[name] = str(opened.path)
    result = build_analysis(
        "deltas",
        base_folder,
        sources,
        inputs=inputs,
        top_k=top_k,
        lang=lang_expert,
        math=math_expert,
        rule=rule,
        boundary_cap=boundary_cap,
        candidate_cap=candidate_cap,
    )
    if out is not None:
        result.save(Path(out), overwrite=overwrite, plots_too=plots)
    return result
