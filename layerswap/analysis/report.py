"""The :class:`Analysis` result: its tables, one method per plot, the summary, and saving to a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from layerswap.analysis import plots
from layerswap.io import AtomicDir, write_provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TABLES = ("deltas", "layers", "overlap", "cosine", "topk", "thresholds", "contrast")


@dataclass
class Analysis:
    """Tables of an analysis of experts against a base (``kind="deltas"``) or of importance (``"importance"``).

    ``deltas`` (per tensor), ``layers`` (per layer, with ``share``), ``overlap`` (top-k% sets per
    pair), ``cosine`` (per pair, layer and module), ``topk`` (where each top-k% set lies),
    ``thresholds`` (the exact global thresholds), ``contrast`` (lang minus math share per layer
    with its spread over modules) and ``boundaries`` (the recommendation, a dict as in
    ``boundaries.yaml``). For importance the "expert" is the data set and its values are
    ``sqrt(Fisher)``, so shares are shares of Fisher mass.
    """

    kind: str
    base: str
    experts: dict[str, str]
    num_layers: int
    top_k: list[float]
    deltas: pd.DataFrame
    layers: pd.DataFrame
    cells: pd.DataFrame
    overlap: pd.DataFrame
    cosine: pd.DataFrame
    topk: pd.DataFrame
    thresholds: pd.DataFrame
    contrast: pd.DataFrame | None = None
    boundaries: dict[str, Any] | None = None
    roles: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    # -- plots ------------------------------------------------------------------------------
    def plot_heatmap(self, expert: str) -> Figure:
        """Layer x module heatmap of one expert's ``rel_l2`` (importance: mean Fisher per parameter)."""
        if expert not in self.experts:
            raise KeyError(f"no expert {expert!r}: have {', '.join(self.experts)}")
        return plots.magnitude_heatmap(self.cells, expert, kind=self.kind)

    def default_pair(self) -> tuple[str, str] | None:
        if self.roles:
            names = list(self.experts)
            a, b = self.roles["math"], self.roles["lang"]
            return (a, b) if names.index(a) < names.index(b) else (b, a)
        names = list(self.experts)
        return (names[0], names[1]) if len(names) >= 2 else None

    def plot_overlap(self, k: float | None = None, pair: tuple[str, str] | None = None) -> Figure:
        """Layer x module heatmap of the top-k% overlap of a pair, relative to independent sets."""
        pair = pair or self.default_pair()
        if pair is None:
            raise ValueError("overlap needs two experts; this analysis has one")
        names = list(self.experts)
        a, b = sorted(pair, key=names.index)
        return plots.overlap_heatmap(self.overlap, a, b, self.top_k[0] if k is None else k, kind=self.kind)

    def plot_shares(self) -> Figure:
        """Per-layer share of each expert with the recommended boundaries."""
        return plots.share_plot(self.layers, self.boundaries, kind=self.kind)

    # -- numbers ------------------------------------------------------------------------------
    def total_overlap(self) -> pd.DataFrame:
        return self.overlap[self.overlap["layer"].isna()].reset_index(drop=True)

    def summary(self, figures: dict[str, list[str]] | None = None) -> str:
        """The markdown of ``summary.md``: headline numbers, the recommendation, the contrast, warnings."""
        noun = {"importance": "importance", "grad": "the base's mean gradients"}.get(self.kind, "deltas")
        lines = [f"# Analysis of {noun}: {', '.join(self.experts)}", ""]
        lines.append(
            f"Base `{self.base}`, {self.num_layers} transformer layers. "
            + ", ".join(f"{k} = `{v}`" for k, v in self.experts.items())
            + "."
        )
        lines.append("")
        lines.append("## Headline")
        from layerswap.analysis.intervals import cosine_over_cells, overlap_vs_chance

        chance = overlap_vs_chance(self.overlap) if len(self.total_overlap()) else pd.DataFrame()
        for i, row in enumerate(self.total_overlap().itertuples()):
            agree = "" if pd.isna(row.sign_agree) else f", {row.sign_agree:.0%} of the shared parameters agree in sign"
            c = chance.iloc[i] if i < len(chance) else None
            vs = (
                ""
                if c is None
                else f"; independent sets give {c['chance_low']:.4f}-{c['chance_high']:.4f}x (95%), hypergeometric p = {c['p_value']:.2g}"
            )
            lines.append(
                f"- top-{row.k_percent:g}% sets of {row.expert_a} and {row.expert_b}: Jaccard {row.jaccard:.4f} vs {row.expected_jaccard:.4f} "
                f"for independent sets ({_x(row.jaccard_ratio)}{vs}){agree}"
            )
        cells = cosine_over_cells(self.cosine) if len(self.cosine) else pd.DataFrame()
        for row in cells.itertuples():
            spread = (
                ""
                if pd.isna(row.cell_low)
                else f"; mean over {row.cells} (layer, module) cells {_f(row.cell_mean)} (95% CI {_f(row.cell_low)} to {_f(row.cell_high)}, bootstrap over cells)"
            )
            lines.append(f"- cosine of {row.expert_a} and {row.expert_b} over all layers: {_f(row.cosine)}{spread}")
        if self.boundaries is not None:
            bd = self.boundaries
            lines.append(
                f"- **recommendation** ({bd['separation']} separation, basis {bd['basis']}): bottom={bd['bottom']}, top={bd['top']}, "
                f"transition={bd['transition']} (score {_f(bd['score'])}). {bd['reason']}"
            )
        else:
            lines.append("- no boundary recommendation: it needs a language and a math expert (`--lang-expert`, `--math-expert`)")
        if self.warnings:
            lines += ["", "## Warnings"] + [f"- {w}" for w in self.warnings]
        if self.contrast is not None:
            lang, math_ = self.roles["lang"], self.roles["math"]
            lines += ["", f"## Contrast per layer ({lang} share minus {math_} share)", ""]
            lines.append(
                "Spread: standard deviation and range of the same difference computed per module kind. Where the spread is as large as the"
            )
            lines.append("difference, the layer does not separate the experts.")
            lines.append("")
            lines.append(f"| layer | {lang} share | {math_} share | diff | module std | module min | module max |")
            lines.append("|---:|---:|---:|---:|---:|---:|---:|")
            cos = self.cosine[(self.cosine["module"] == "all") & self.cosine["layer"].notna()]
            for r in self.contrast.itertuples():
                lines.append(
                    f"| {r.layer} | {_p(r.share_lang)} | {_p(r.share_math)} | {_p(r.diff)} | {_p(r.diff_module_std)} | {_p(r.diff_module_min)} | {_p(r.diff_module_max)} |"
                )
            if len(cos):
                lines += [
                    "",
                    "Cosine between the experts per layer: "
                    + ", ".join(f"{int(r.layer)}: {_f(r.cosine, 2)}" for r in cos.itertuples()),
                ]
        if figures:
            lines += ["", "## Figures", ""]
            for title, paths in figures.items():
                png = next((p for p in paths if p.endswith(".png")), paths[0])
                lines.append(f"- [{title}]({png}) ([svg]({png[:-4]}.svg))")
        tables = "`deltas.csv` (per tensor), `layers.csv` (per layer), `overlap.csv`, `cosine.csv`, `topk.csv`, `thresholds.csv`"
        if self.contrast is not None:
            tables += ", `contrast.csv`, `boundaries.yaml` (recommendation and ranked candidates)"
        lines += ["", f"Tables: {tables}."]
        return "\n".join(lines).rstrip() + "\n"

    # -- files --------------------------------------------------------------------------------
    def write_into(self, folder: Path, *, plots_too: bool = True, provenance: dict[str, Any] | None = None) -> None:
        """Write tables, YAML, figures, summary and provenance into an existing folder."""
        for name in TABLES:
            table = getattr(self, name)
            if table is not None:
                table.to_csv(folder / f"{name}.csv", index=False)
        if self.boundaries is not None:
            (folder / "boundaries.yaml").write_text(
                yaml.safe_dump(self.boundaries, sort_keys=False, allow_unicode=True), encoding="utf-8"
            )
        figures: dict[str, list[str]] = {}
        if plots_too:
            (folder / "figures").mkdir(exist_ok=True)
            for expert in self.experts:
                figures[f"{expert}: magnitude per layer x module"] = self._save(
                    self.plot_heatmap(expert), folder, f"heatmap_{expert}"
                )
            if len(self.experts) >= 2:
                pair = self.default_pair()
                for k in self.top_k:
                    figures[f"top-{k:g}% overlap, {pair[0]} vs {pair[1]}"] = self._save(
                        self.plot_overlap(k, pair), folder, f"overlap_{pair[0]}_{pair[1]}_top{k:g}"
                    )
            figures["per-layer shares and boundaries"] = self._save(self.plot_shares(), folder, "shares")
        (folder / "summary.md").write_text(self.summary(figures), encoding="utf-8")
        record = {
            "kind": f"analysis:{self.kind}",
            "base": self.base,
            "experts": self.experts,
            "top_k": self.top_k,
            "roles": self.roles,
            "warnings": self.warnings,
        }
        record.update(self.info)
        record.update(provenance or {})
        write_provenance(folder, record)

    @staticmethod
    def _save(fig: Figure, folder: Path, stem: str) -> list[str]:
        return [str(p.relative_to(folder)) for p in plots.save_figure(fig, folder / "figures" / stem)]

    def save(self, out: str | Path, *, overwrite: bool = False, plots_too: bool = True) -> Path:
        """Write everything into ``out`` atomically (a temporary sibling renamed at the end)."""
        atomic = AtomicDir(out, overwrite=overwrite)
        with atomic as tmp:
            self.write_into(tmp, plots_too=plots_too)
        self.out = atomic.out
        return atomic.out


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _x(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}x the independent rate"
