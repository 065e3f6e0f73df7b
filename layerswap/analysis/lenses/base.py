"""The lens registry: what a lens is given, what it returns, and how its tables become a recommendation.

A lens looks at the base and the experts (or the base on each task's data) and says, per
transformer layer and module, how much of each role (``lang``, ``math``) it sees there: its
``cells`` table (``expert, layer, module, sumsq, ...``), as the delta analysis' is. From the cells
every lens gets the same ``layers`` shares, the same ``contrast`` and the same boundary rule
(:func:`~layerswap.analysis.boundaries.recommend`), and plots with the same functions. A new lens
is one file in this package that calls :func:`register`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from layerswap.analysis import plots
from layerswap.analysis.boundaries import BoundaryRule, contrast_table, recommend
from layerswap.analysis.report import Analysis
from layerswap.errors import ConfigError
from layerswap.io import Checkpoint, Language, ModelFolder

CELL_COLUMNS = ["expert", "layer", "module", "sumsq", "base_sumsq", "numel"]


@dataclass
class LensContext:
    """Everything a lens may read, opened and checked before any model loads."""

    base: ModelFolder
    experts: dict[str, Checkpoint]  # name -> opened checkpoint
    roles: dict[str, str] | None  # {"lang": expert name, "math": expert name}
    data: dict[str, str]  # role ("lang"/"math") -> data spec
    texts: dict[str, list[str]]  # role -> the first ``examples`` texts of its spec
    target: Language | None
    data_dir: str | os.PathLike[str] | None = None
    examples: int = 16
    batch_size: int = 4
    seq_len: int = 64
    device: str = "cpu"
    top_k: tuple[float, ...] = (1.0, 5.0)
    rule: BoundaryRule = field(default_factory=BoundaryRule)
    options: dict[str, Any] = field(default_factory=dict)  # per-lens knobs (cka_tokens, logit_tokens, ...)
    shared: dict[str, Any] = field(default_factory=dict)  # work shared between lenses (the forward passes)


@dataclass
class LensResult:
    """One lens's tables. ``analysis`` is set for the weight lenses, which write today's analysis folder."""

    name: str
    cells: pd.DataFrame
    layers: pd.DataFrame
    contrast: pd.DataFrame | None
    boundaries: dict[str, Any] | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    value: str = "value"  # what ``sumsq`` holds, for the heatmap's colour bar
    analysis: Analysis | None = None
    skipped: str | None = None  # why the lens could not run (its other fields are empty)

    def write_into(self, folder: Path, *, plots_too: bool = True) -> None:
        """The lens's folder: its own tables, ``cells``/``layers``/``contrast``, ``boundaries.yaml``, figures, summary."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.skipped:
            (folder / "summary.md").write_text(f"# Lens {self.name}: skipped\n\n{self.skipped}\n", encoding="utf-8")
            return
        if self.analysis is not None:
            self.analysis.write_into(folder, plots_too=plots_too)
            self.cells.to_csv(folder / "cells.csv", index=False)
            return
        for name, table in {**self.tables, "cells": self.cells, "layers": self.layers, "contrast": self.contrast}.items():
            if table is not None:
                table.to_csv(folder / f"{name}.csv", index=False)
        if self.boundaries is not None:
            (folder / "boundaries.yaml").write_text(
                yaml.safe_dump(self.boundaries, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
        figures = []
        if plots_too and len(self.cells):
            (folder / "figures").mkdir(exist_ok=True)
            for expert in self.cells["expert"].unique():
                fig = plots.magnitude_heatmap(self.cells, str(expert), kind=self.name, label=self.value)
                figures += plots.save_figure(fig, folder / "figures" / f"heatmap_{expert}")
            figures += plots.save_figure(
                plots.share_plot(self.layers, self.boundaries, kind=self.name), folder / "figures" / "shares"
            )
        (folder / "summary.md").write_text(self.summary([str(Path(p).relative_to(folder)) for p in figures]), encoding="utf-8")

    def summary(self, figures: list[str] = ()) -> str:
        lines = [f"# Lens {self.name}", "", f"Cells: {self.value}.", ""]
        bd = self.boundaries
        if bd is not None:
            lines.append(
                f"- **recommendation** ({bd['separation']} separation, basis {bd['basis']}): bottom={bd['bottom']}, top={bd['top']}, "
                f"transition={bd['transition']}. {bd['reason']}"
            )
        lines += [f"- {w}" for w in self.warnings]
        if figures:
            lines += ["", "Figures: " + ", ".join(f"[{Path(p).stem}]({p})" for p in figures if p.endswith(".png"))]
        lines += [
            "",
            "Tables: "
            + ", ".join(
                f"`{n}.csv`" for n in [*self.tables, "cells", "layers"] + (["contrast"] if self.contrast is not None else [])
            ),
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Lens:
    """A registered lens: its name, what it needs, and the function that computes it."""

    name: str
    run: Callable[[LensContext], LensResult]
    doc: str
    needs_experts: bool = True  # False: it reads only the base (and the data)
    needs_data: bool = False
    min_examples: int = 1  # examples per data set it needs
    needs_target: bool = False  # needs the target language (logit lens, LAPE)
    forward: bool = False  # shares the activation pass
    probe: Callable[[LensContext], Any] | None = None  # forward lenses: what it keeps during the pass (forward.Probe)
    skip: Callable[[LensContext], str | None] | None = None  # why it cannot run here (checked before any model loads)


LENSES: dict[str, Lens] = {}


def register(lens: Lens) -> Lens:
    if lens.name in LENSES:
        raise ValueError(f"lens {lens.name!r} is registered twice")
    LENSES[lens.name] = lens
    return lens


def get_lens(name: str) -> Lens:
    from layerswap.analysis import lenses  # noqa: F401  (registers the built-in lenses)

    if name not in LENSES:
        raise ConfigError(f"unknown lens {name!r}: choose from {', '.join(LENSES)}")
    return LENSES[name]


def from_analysis(name: str, analysis: Analysis) -> LensResult:
    """A lens result that is an :class:`Analysis` of the delta machinery (deltas, importance, grad)."""
    return LensResult(
        name,
        analysis.cells,
        analysis.layers,
        analysis.contrast,
        analysis.boundaries,
        warnings=list(analysis.warnings),
        info=dict(analysis.info),
        analysis=analysis,
    )


def cells_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Cells from ``{expert, layer, module, value}`` rows (``sumsq`` = the lens's non-negative value)."""
    df = pd.DataFrame(
        [
            {
                "expert": r["expert"],
                "layer": int(r["layer"]),
                "module": r["module"],
                "sumsq": max(0.0, float(r["value"])),
                "base_sumsq": np.nan,
                "numel": 1,
            }
            for r in rows
        ],
        columns=CELL_COLUMNS,
    )
    return df


def layer_shares(cells: pd.DataFrame) -> pd.DataFrame:
    """Per expert and layer: the lens's value summed over modules and its ``share`` of the expert's total."""
    by_layer = cells.groupby(["expert", "layer"], sort=False)["sumsq"].sum().reset_index().rename(columns={"sumsq": "value"})
    totals = by_layer.groupby("expert")["value"].transform("sum")
    with np.errstate(divide="ignore", invalid="ignore"):
        by_layer["share"] = np.where(totals > 0, by_layer["value"] / totals.where(totals > 0, 1), np.nan)
    by_layer["layer"] = by_layer["layer"].astype(int)
    return by_layer.sort_values(["expert", "layer"], kind="stable").reset_index(drop=True)


def finish(
    name: str, cells: pd.DataFrame, ctx: LensContext, num_layers: int, *, lang: str = "lang", math: str = "math", **kw: Any
) -> LensResult:
    """Shares, contrast and the boundary rule of a lens's cells (rows named by role: ``lang`` and ``math``)."""
    cells.attrs["kind"] = name
    layers = layer_shares(cells)
    contrast = boundaries = None
    warnings = list(kw.pop("warnings", []))
    present = set(cells["expert"])
    if {lang, math} <= present:
        contrast = contrast_table(cells, lang, math, num_layers)
        boundaries = {"kind": name} | recommend(contrast, cells, lang, math, ctx.rule)
        if boundaries["separation"] == "none":
            warnings.append(boundaries["reason"])
    return LensResult(name, cells, layers, contrast, boundaries, warnings=warnings, **kw)


def named_roles(names: Mapping[str, Any] | list[str], what: str) -> dict[str, str]:
    """Which of ``names`` is the language one and which the math one, or a one-line error."""
    from layerswap.analysis.core import resolve_roles

    roles = resolve_roles(list(names))
    if roles is None:
        raise ConfigError(
            f"cannot tell the language {what} from the math {what} among {', '.join(names) or 'none'}: name them lang and math"
        )
    return roles
