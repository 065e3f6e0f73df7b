"""The demo's ``report.md``, the answer first: the target's finalists (MGSM exact match beside language
fidelity) and the best swap against each expert and baseline, then the screen's leader with its paired
verdicts and the language check (the base and the best swap against both experts), then how it was made:
the experts' checks, what the run can show, what each stage cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from layerswap.pipeline.checks import check_lines
from layerswap.pipeline.config import DemoConfig
from layerswap.pipeline.experts import training_precision
from layerswap.pipeline.stages import StageCost


class SweepReads(NamedTuple):
    """What the demo reads of a sweep's result."""

    results: Any  # results.csv as a frame
    comparisons: Any  # comparisons.csv as a frame
    selection: Any  # the leader on the decision task
    decisions: Any = None  # every decision (the best swap per task)


def sweep_reads(sweep: Any) -> SweepReads:
    """The one place the pipeline reads :func:`~layerswap.sweep.loop.run_sweep`'s result."""
    return SweepReads(sweep.results, sweep.comparisons, sweep.selection, getattr(sweep, "decisions", None))


def _best_swap(reads: SweepReads, task: str) -> str | None:
    return reads.decisions.best_swap(task) if reads.decisions is not None else None


def _interval(reads: SweepReads) -> str:
    """`` (95% CI [lo, hi])`` of the leader's headline metric, from the sweep's results."""
    from layerswap.sweep.report import per_candidate

    sel = reads.selection
    row = per_candidate(reads.results, sel.task, sel.metric).set_index("candidate").loc[sel.winner]
    return "" if row[["ci_low", "ci_high"]].isna().any() else f" (95% CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}])"


def _language_check(reads: SweepReads, language: str) -> list[str]:
    """Did the candidates keep the language? FLORES bits per byte of the base, the proxy's leader and the
    best swap, each against both experts (and the base), paired."""
    from layerswap.sweep.verdicts import against_lines

    comps = reads.comparisons
    subjects = dict.fromkeys(c for c in ("base", reads.selection.winner, _best_swap(reads, "flores")) if c is not None)
    lines = []
    for subject in subjects:
        others = [o for o in ("math", "lang", "base") if o != subject]
        lines += against_lines(comps, "flores", "bits_per_byte", subject, others)
    if not lines:
        return []
    return [f"Language check (FLORES-{language} bits per byte, paired, lower is better; \"beats\": lower):", "", *(f"- {x}" for x in lines)]


def _target_lines(reads: SweepReads, language: str) -> list[str]:
    """The finalists on MGSM exact match and, beside it, whether they answered in the language asked
    (language fidelity: the share of answers, and of their chain-of-thought tokens, in that language)."""
    from layerswap.sweep.selection import SWAP_METHOD, per_candidate
    from layerswap.sweep.verdicts import against_lines

    res = reads.results
    exact = per_candidate(res, "mgsm", "exact_match")
    if exact.empty:
        return []
    extra = {m: per_candidate(res, "mgsm", m).set_index("candidate") for m in ("lang_fidelity", "cot_fidelity")}

    def cell(frame: Any, name: str) -> str:
        if frame is None or name not in frame.index or frame.loc[name, ["value"]].isna().any():
            return "n/a"
        row = frame.loc[name]
        ci = "" if row[["ci_low", "ci_high"]].isna().any() else f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
        return f"{row['value']:.2f}{ci}"

    lines = [
        f"Target (MGSM-{language} exact match, finalists; 95% intervals): language fidelity is the share of answers "
        f"in {language} by py3langid, CoT fidelity the share of their chain-of-thought tokens.",
        "",
        "| candidate | exact match | language fidelity | CoT fidelity |",
        "|---|---|---|---|",
    ]
    ex = exact.set_index("candidate")
    for name in ex.index:
        lines.append(f"| `{name}` | {cell(ex, name)} | {cell(extra['lang_fidelity'], name)} | {cell(extra['cot_fidelity'], name)} |")
    best = _best_swap(reads, "mgsm")
    if best is None:
        return lines
    others = [c for c, m in zip(exact["candidate"], exact["method"], strict=True) if c != best and m != SWAP_METHOD]
    others = [c for c in ("math", "lang") if c in others] + [c for c in others if c not in ("math", "lang")]
    said = [(metric, against_lines(reads.comparisons, "mgsm", metric, best, others)) for metric in ("exact_match", "lang_fidelity")]
    lines += [""] + [f"- {label}: {text[0]}" for (metric, text), label in zip(said, ("Exact match", "Language fidelity"), strict=True) if text]
    return lines


def closing_note(reads: SweepReads) -> list[str]:
    """How many examples would settle the method's question: the best swap against the base on the screen."""
    from layerswap.sweep.compare import against
    from layerswap.sweep.verdicts import fmt

    sel = reads.selection
    best = _best_swap(reads, sel.task) or sel.best_swap
    rows = against(reads.comparisons, sel.task, sel.metric, "base") if best is not None else None
    if rows is None or not (rows["candidate"] == best).any():
        return []
    r = rows[rows["candidate"] == best].iloc[0]
    need = r["examples_needed"]
    if r["test"] == "race" or need != need:
        return []
    size = "no number of examples would (the observed difference is 0)" if need == float("inf") else f"about {int(need):,} examples would"
    return [f"**Examples needed.** The best swap `{best}` against `base` on the {sel.task} ({fmt(r)}, over {int(r['n'])} examples, "
            f"{r['verdict']}): {size} detect the observed difference with 80% power at the same level."]


def stage_table(costs: dict[str, StageCost]) -> list[str]:
    """What each stage cost: seconds (over every run of it) and its peak resident memory."""
    lines = ["| stage | seconds | peak memory (MiB) |", "|---|---|---|"]
    for name, cost in costs.items():
        peak = "" if cost.peak_rss_mib is None else f"{cost.peak_rss_mib:.0f}"
        lines.append(f"| {name} | {cost.seconds:.0f} | {peak} |")
    return lines


def demo_report(
    config: DemoConfig, out: Path, costs: dict[str, StageCost], sweep: Any, checks: dict[str, Any] | None = None
) -> str:
    from layerswap.sweep.lens_table import read_lens_section
    from layerswap.sweep.seeds import seed_section
    from layerswap.sweep.verdicts import verdict_lines

    reads = sweep_reads(sweep)
    sel = reads.selection
    lines = [
        "# layerswap demo",
        "",
        "## The answer: the target",
        "",
        *(_target_lines(reads, config.language) or ["MGSM exact match was not evaluated."]),
        "",
        "## The screen",
        "",
        f"Best mean on the proxy (MGSM-{config.language} gold-answer log-likelihood, halving over up to {config.screen_examples or 2 * config.limit} examples): "
        f"`{sel.winner}` = {sel.value:.4g}{_interval(reads)}. " + sel.comparison(),
        "",
        *verdict_lines(reads.comparisons, sel.task, sel.metric),
        "",
        *_language_check(reads, config.language),
        "",
        *closing_note(reads),
        "",
        "## How it was made",
        "",
        *(check_lines(checks) if checks else ["The experts were not checked against the base."]),
        "",
        f"Base `{config.base}`, {config.method} fine-tuning for {config.steps} steps per expert, batch {config.batch_size}, "
        f"{config.math_seq_len} tokens (math) and {config.seq_len} (language) per example "
        f"(learning rate {config.lr if config.lr is not None else 'default'}, precision {training_precision(config.precision)}), target language `{config.language}`. "
        "The math expert learns GSM8K train written as MGSM's English CoT answers (loss on the answer only); the language "
        "expert learns NTREX text. [Expert checks](checks/checks.md).",
        "",
        "**What this can and cannot show.** A 270M-parameter base and minutes of CPU training are a working "
        "demonstration of the pipeline, not a replication of the paper's gains: the experts learn a little (the lines "
        "above), so differences between merged candidates are small and the analysis may report no clear separation "
        "between the experts. The same command with a 7-8B base and real budgets on a GPU (`--base`, `--steps`, `--limit`) "
        "is the real experiment.",
        "",
        *seed_section(out, config.seeds),
        "",
        *read_lens_section(out / "sweep", root=out),
        *stage_table(costs),
        "",
        "- [analysis summary](analysis/summary.md) (deltas of the experts)",
        "- [importance summary](importance/summary.md) (diagonal Fisher of the base on each task's data)",
        "- [sweep report](sweep/report.md) (merge-then-evaluate)",
        "",
    ]
    return "\n".join(lines)
