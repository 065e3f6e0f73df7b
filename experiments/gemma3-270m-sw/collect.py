#!/usr/bin/env python
"""Copy an evidence run's small outputs into results/ and answer the run's four questions in README.md.

    python experiments/gemma3-270m-sw/collect.py OUT

OUT is the folder ./run.sh wrote. Everything but the experts' checkpoints is copied (reports,
tables, figures, the halving units, the experts' training logs). README.md answers, each with its
interval, from those tables alone:

(a) does each expert learn its skill (the demo's expert checks, paired against the base);
(b) do the experts' deltas separate (magnitude, top-k overlap and cosine lenses, each against
    chance), does the base's Fisher importance agree with where they changed, and which of every
    lens the run ran (deltas, importance, CKA, logit lens, LAPE, gradients) separates the tasks;
(c) does the best swap beat each expert, the soup and TIES on MGSM-sw (the target, on the
    finalists) and on the proxy (all candidates, halving);
(d) does each lens's score predict the measured ranking of swaps (the sweep's lens table).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import yaml

from layerswap.analysis.intervals import (
    cells_from_deltas,
    contrast_agreement,
    cosine_over_cells,
    overlap_vs_chance,
    read_table,
    share_agreement,
    split_gain,
)
from layerswap.errors import LayerswapError
from layerswap.evaluate.tasks import get_task
from layerswap.sweep.candidates import lens_sources
from layerswap.sweep.compare import against
from layerswap.sweep.lens_table import LENS_TABLE_FILE, table_lines
from layerswap.sweep.selection import read_decisions

HERE = Path(__file__).resolve().parent
#: Files of an expert's folder worth keeping (its weights are not).
EXPERT_FILES = ("layerswap.json", "loss.csv", "loss.png", "recipe.yaml")
TITLE = "# Evidence run: Gemma 3 270M, Swahili"
#: Written into results/ by this script: only such a folder may be replaced.
MARKER = ".collected-by-layerswap"


def copy_outputs(run: Path, dest: Path) -> None:
    """Everything under ``run`` except the experts' weights, into a fresh ``dest``.

    ``dest`` is replaced only when this script wrote it (its ``MARKER`` file): never a folder of
    something else (a run folder included), never the run itself or a folder around it."""
    dest = dest.resolve()
    if dest == run or dest in run.parents or run in dest.parents:
        raise SystemExit(f"error: {dest} overlaps the run folder {run}: choose another --dest")
    if dest.exists():
        if not (dest / MARKER).is_file():
            raise SystemExit(f"error: {dest} exists and was not written by collect.py (no {MARKER}): move it or choose another --dest")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for src in sorted(run.rglob("*")):
        rel = src.relative_to(run)
        if not src.is_file() or src.is_symlink():
            continue
        if rel.parts[0] == "experts" and src.name not in EXPERT_FILES:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    (dest / MARKER).write_text("copied by collect.py from a run folder of ./run.sh\n")


def ci(low: float, high: float, fmt: str = "+.3f") -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return "[n/a]"
    return f"[{low:{fmt}}, {high:{fmt}}]"


def answer_a(run: Path) -> list[str]:
    checks = json.loads((run / "checks" / "checks.json").read_text())
    m, g = checks["math"], checks["lang"]
    return [
        "## (a) Does each expert learn its skill?",
        "",
        f"- **math expert: {'yes' if m['learned'] else 'not measurably'}.** {m['diff']:+.3f} nats per token "
        f"(95% CI {ci(m['low'], m['high'])}, paired permutation p = {m['p_value']:.2g}, n = {m['n']}) on the log-likelihood "
        f"of the gold worked solution, {m['data']}: base {m['base']:.3f}, expert {m['expert']:.3f}.",
        f"- **language expert: {'yes' if g['learned'] else 'not measurably'}.** {g['diff']:+.3f} bits per byte "
        f"(95% CI {ci(g['low'], g['high'])}, p = {g['p_value']:.2g}, n = {g['n']}), {g['data']}: base {g['base']:.3f}, "
        f"expert {g['expert']:.3f} (lower is better).",
        "",
        "Tables: [checks/checks.md](results/checks/checks.md), per example in `results/checks/scores.csv`; training "
        "losses in `results/experts/*/loss.csv`.",
    ]


def answer_b(run: Path) -> list[str]:
    a_dir, i_dir = run / "analysis", run / "importance"
    rec = yaml.safe_load((a_dir / "boundaries.yaml").read_text())
    irec = yaml.safe_load((i_dir / "boundaries.yaml").read_text())
    n = int(rec["num_layers"])
    cells, icells = cells_from_deltas(read_table(a_dir, "deltas")), cells_from_deltas(read_table(i_dir, "deltas"))
    lines = ["## (b) Do the experts' deltas separate, and does importance agree with where they changed?", ""]
    lines.append(
        f"Deltas' recommendation: separation **{rec['separation']}** (basis {rec['basis']}), "
        f"bottom={rec['bottom']}, top={rec['top']}, transition={rec['transition']}: {rec['reason']}."
    )
    lines += ["", "| lens | measured | 95% interval | reads as |", "|---|---|---|---|"]
    for row in overlap_vs_chance(read_table(a_dir, "overlap")).itertuples():
        outside = not (row.chance_low <= row.jaccard_ratio <= row.chance_high)
        lines.append(
            f"| top-{row.k_percent:g}% overlap (Jaccard / chance's) | {row.jaccard_ratio:.4f}x ({row.n_both} shared of "
            f"{row.expected:.0f} expected) | chance gives {row.chance_low:.4f}-{row.chance_high:.4f}x | "
            f"{'beyond' if outside else 'within'} chance (hypergeometric p = {row.p_value:.2g}) |"
        )
    for row in cosine_over_cells(read_table(a_dir, "cosine")).itertuples():
        zero = row.cell_low <= 0 <= row.cell_high
        lines.append(
            f"| cosine of the deltas | {row.cosine:.4f} over all layers; {row.cell_mean:.4f} mean over {row.cells} "
            f"(layer, module) cells | {ci(row.cell_low, row.cell_high, '.4f')} (bootstrap over cells) | "
            f"{'indistinguishable from orthogonal' if zero else 'not orthogonal'} |"
        )
    for label, c, r in (("deltas", cells, rec), ("importance", icells, irec)):
        g = split_gain(c, "lang", "math", int(r["bottom"]), int(r["top"]), num_layers=n)
        which = "the paper's prior language layers" if r.get("basis") == "prior" else "the recommended language layers"
        lines.append(
            f"| magnitude ({label}): language minus math share in {which} (b={g['bottom']}, "
            f"u={g['top']}) | gain {g['gain']:+.3f}; {g['modules_positive']}/{g['modules']} module kinds positive | "
            f"{ci(g['module_low'], g['module_high'])} (mean over module kinds, bootstrap) | "
            f"{'separates' if g['module_low'] > 0 else 'opposite of the hypothesis' if g['module_high'] < 0 else 'no separation'} |"
        )
    lines += [
        "",
        "Does the base's diagonal Fisher on each expert's data agree with where that expert changed? Spearman's rho between "
        "the two analyses, per module kind's profile over the layers and per layer (95% bootstrap intervals):",
        "",
        "| expert | over (layer, module) cells | over layers |",
        "|---|---|---|",
    ]
    for expert in ("math", "lang"):
        s = share_agreement(cells, icells, expert)
        lines.append(
            f"| {expert} | {s['cell_rho']:+.2f} {ci(s['cell_low'], s['cell_high'], '+.2f')} ({s['cells']} cells) | "
            f"{s['layer_rho']:+.2f} {ci(s['layer_low'], s['layer_high'], '+.2f')} ({s['layers']} layers) |"
        )
    c = contrast_agreement(read_table(a_dir, "contrast"), read_table(i_dir, "contrast"))
    lines += [
        "",
        f"Per-layer contrast (language share minus math share), deltas vs importance: rho = {c['rho']:+.2f} "
        f"{ci(c['low'], c['high'], '+.2f')} over {c['layers']} layers. Intervals over cells treat cells as independent; "
        "neighbouring layers are not, so read them as lower bounds on the uncertainty.",
        "",
        "Summaries: [deltas](results/analysis/summary.md), [importance](results/importance/summary.md)"
        + (", [lenses](results/lenses/summary.md)." if (run / "lenses").is_dir() else "."),
        "",
        *lens_separation(run, n),
    ]
    return lines


def _lens_cells(folder: Path) -> pd.DataFrame:
    if (folder / "cells.csv").is_file():
        return read_table(folder, "cells")
    return cells_from_deltas(read_table(folder, "deltas"))


def lens_separation(run: Path, num_layers: int) -> list[str]:
    """Each lens's recommended swap and whether its language-minus-math share in those layers is
    positive over module kinds (the boundary rule's gain, bootstrap interval over module kinds)."""
    folders = [run / "analysis", run / "importance"] + ([run / "lenses"] if (run / "lenses").is_dir() else [])
    lines = [
        "Does each lens separate the tasks? Each lens's own recommendation by the same boundary rule, and the language-minus-math "
        "share it gives those layers (the rule's gain; 95% bootstrap interval over module kinds, which treats them as independent):",
        "",
        "| lens | recommends (bottom, top, transition) | the lens's verdict | gain (all cells) | mean over module kinds [95% interval] | reads as |",
        "|---|---|---|---|---|---|",
    ]
    for source in lens_sources([str(f) for f in folders]):  # the sweep's own reading of these folders
        name, bd, folder = source.name, source.data, source.path.parent
        if source.why is not None:
            lines.append(f"| {name} | none | skipped | | | {source.why.replace('|', '/')} |")
            continue
        head = f"| {name} | ({bd['bottom']}, {bd['top']}, {bd['transition']}) | {bd['separation']} (basis {bd['basis']}) |"
        try:
            g = split_gain(_lens_cells(folder), "lang", "math", int(bd["bottom"]), int(bd["top"]), num_layers=num_layers)
        except (LayerswapError, KeyError, ValueError) as exc:
            lines.append(f"{head} | | | no gain: {str(exc).replace('|', '/')} |")
            continue
        low, high = g["module_low"], g["module_high"]
        reads = "n/a (one module kind)" if g["modules"] < 2 else "separates" if low > 0 else "opposite of the hypothesis" if high < 0 else "no separation"
        lines.append(
            f"{head} {g['gain']:+.3f}; {g['modules_positive']}/{g['modules']} module kinds positive | "
            f"{g['module_mean']:+.3f} {ci(low, high) if g['modules'] >= 2 else '[n/a]'} | {reads} |"
        )
    return lines


def _comparison_rows(comps: pd.DataFrame, task: str, candidate: str, references: list[str]) -> list[str]:
    metric = get_task(task).metric
    out = []
    for ref in references:
        r = against(comps, task, metric, ref)  # one row per pair: read it as candidate minus ref
        r = r[r["candidate"] == candidate]
        if r.empty:
            out.append(f"| `{candidate}` vs `{ref}` | {task} | not compared (not evaluated on the same examples) | | | |")
            continue
        r = r.iloc[0]
        out.append(
            f"| `{candidate}` vs `{ref}` | {task} | {r['diff']:+.4g} | {ci(r['ci_low'], r['ci_high'], '+.4g')} | "
            f"{r['p_adjusted']:.2g} | {r['verdict']} (n = {int(r['n'])}) |"
        )
    return out


def answer_c(run: Path) -> list[str]:
    results = pd.read_csv(run / "sweep" / "results.csv")
    comps = pd.read_csv(run / "sweep" / "comparisons.csv")
    names = results["candidate"].unique().tolist()
    refs = ["math", "lang"] + [n for n in names if n == "soup" or n.startswith("ties-")]
    lines = ["## (c) Does the best swap beat each expert, the soup and TIES?", ""]
    lines += ["| comparison | task | difference | CI (paired, the test's own, at the family's level) | adjusted p | verdict |", "|---|---|---|---|---|---|"]
    decisions = read_decisions(run / "sweep")  # the sweep's own best swap per task: collect.py does not choose
    for task in ("mgsm", "proxy"):
        best = decisions.best_swap(task)
        if best is not None:
            lines += _comparison_rows(comps, task, best, refs)
    target = results[(results["task"] == "mgsm") & (results["metric"] == "exact_match")]
    lines += ["", "MGSM-sw exact match of the finalists (the target):", ""]
    lines += [
        f"- `{r.candidate}`: {r.value:.3f} (95% CI {ci(r.ci_low, r.ci_high, '.3f')}, n = {int(r.n)})" for r in target.itertuples()
    ]
    lines += [
        "",
        "Full report: [sweep/report.md](results/sweep/report.md).",
        "",
        "![best swap against the baselines on the proxy](results/sweep/figures/best_vs_baselines_proxy-gold_logprob.png)",
    ]
    return lines


def answer_d(run: Path) -> list[str]:
    """The sweep's lens table as the sweep wrote it (``sweep/lens_table.csv``): collect.py does not recompute it."""
    lines = ["## (d) Does each lens's score predict the measured ranking of swaps?", ""]
    path = run / "sweep" / LENS_TABLE_FILE
    if not path.is_file():
        return lines + ["The sweep wrote no lens table (no lens proposed candidates).", ""]
    lines += table_lines(pd.read_csv(path))[2:]
    figure = run / "sweep" / "figures" / "lens_table.png"
    if figure.is_file():
        lines += ["![which lens predicted this run](results/sweep/figures/lens_table.png)"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the folder ./run.sh wrote")
    parser.add_argument("--dest", type=Path, default=HERE, help="where results/ and README.md go (default: next to this file)")
    args = parser.parse_args()
    run = args.run.resolve()
    if not (run / "report.md").is_file():
        raise SystemExit(f"error: {run}/report.md not found: the run has not finished (rerun ./run.sh {run}, it resumes)")
    readme = args.dest / "README.md"
    if readme.exists() and not readme.read_text().startswith(TITLE):
        raise SystemExit(f"error: {readme} exists and was not written by this script: choose another --dest")
    copy_outputs(run, args.dest / "results")
    demo = yaml.safe_load((run / "demo.yaml").read_text())
    seconds = json.loads((run / "layerswap.json").read_text()).get("timings_s", {})
    lines = [
        TITLE,
        "",
        f"`./run.sh` with [config.yaml](config.yaml) (`layerswap demo --config config.yaml`): {demo['method']} fine-tuning, "
        f"{demo['steps']} steps per expert, {demo['check_examples']} examples per expert check, halving over up to "
        f"{demo.get('screen_examples') or 2 * demo['limit']} MGSM-sw proxy examples, {demo['limit']} examples of MGSM-sw and FLORES-sw per finalist. "
        f"Stages took {sum(seconds.values()) / 60:.0f} minutes on 2 CPU cores "
        f"({', '.join(f'{k} {v / 60:.0f}' for k, v in seconds.items() if v >= 30)} min). "
        f"Outputs: [results/](results/) ([demo report](results/report.md)).",
        "",
        "Reproduce: `experiments/gemma3-270m-sw/run.sh OUT ../shared/data` (rerun the same command to resume), then "
        "`python experiments/gemma3-270m-sw/collect.py OUT` (copies the small outputs here and rewrites this file from them).",
        "",
        *answer_a(run),
        "",
        *answer_b(run),
        "",
        *answer_c(run),
        "",
        *answer_d(run),
        "",
    ]
    (args.dest / "README.md").write_text("\n".join(lines))
    print(f"wrote {args.dest / 'README.md'} and {args.dest / 'results'}")


if __name__ == "__main__":
    main()
