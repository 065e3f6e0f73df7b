"""The demo: the whole pipeline on the embedded default model and real data, end to end.

prepare Gemma 3 270M -> fine-tune a math expert (GSM8K train) and a Swahili expert (NTREX) ->
analyse their deltas and the base's importance on the same data -> sweep the recommended swaps
and the baselines with the fast metrics (MGSM-sw proxy, FLORES-sw bits per byte) -> report.

The budgets are small so that it runs on a laptop CPU; the same function with a larger base and
budgets (``--base``, ``--steps``, ``--limit``) is the real experiment on a GPU. Every stage writes
into its own folder and is skipped when that folder is complete, so a rerun resumes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from layerswap.config import StrictModel, dump_config, validate_config
from layerswap.io import resolve_data_dir, write_text_atomic
from layerswap.sweep.config import SweepConfig


class DemoConfig(StrictModel):
    """Budgets of the demo; ``quick`` shrinks them to a CI smoke run of a few minutes."""

    base: str = Field("gemma3-270m", description="Base model folder or embedded name.")
    data_dir: str | None = Field(
        None, description="Data folder laid out like ../shared/data (else $LAYERSWAP_DATA_DIR, ./shared/data, ../shared/data, or the Hub)."
    )
    language: str = Field("sw", description="Target language code.")
    method: Literal["full", "lora"] = Field("full", description="full or lora fine-tuning of the experts.")
    steps: int = Field(12, ge=1, description="Training steps per expert.")
    batch_size: int = Field(4, ge=1, description="Training batch size of the experts.")
    seq_len: int = Field(128, ge=16, description="Training sequence length of the experts (tokens).")
    lr: float | None = Field(None, description="Learning rate of the experts (default: the fine-tuning default for the method).")
    importance_examples: int = Field(16, ge=1, description="Examples per task for the base's diagonal Fisher.")
    limit: int = Field(12, ge=1, description="Examples per evaluation task in the sweep.")
    top_n: int = Field(4, ge=1, description="Recommended swap candidates to evaluate.")
    baselines: list[str] = Field(
        default_factory=lambda: ["base", "math", "lang", "linear", "ties", "dare_ties", "revert"],
        description="Baselines of the sweep (repeat the flag).",
    )
    figures: str | None = Field(None, description="Also copy the headline figures into this folder (the repo's figures/).")

    @classmethod
    def quick_config(cls, **overrides: Any) -> "DemoConfig":
        values: dict[str, Any] = {
            "steps": 2,
            "batch_size": 2,
            "seq_len": 64,
            "importance_examples": 2,
            "limit": 3,
            "top_n": 2,
            "baselines": ["base", "math", "lang", "ties"],
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return validate_config(cls, values, source="demo options")


def _stage(name: str, folder: Path, log: Callable[[str], None], run: Callable[[], Any]) -> float:
    """Run a stage unless its output folder is complete (marked by ``layerswap.json``).

    A stage's duration is kept next to its folder, so a resumed demo still reports what each
    stage cost when it ran.
    """
    record = folder.parent / f".{folder.name}.seconds"
    if (folder / "layerswap.json").exists():
        log(f"[{name}] done already: {folder}")
        return float(record.read_text()) if record.exists() else 0.0
    log(f"[{name}] ...")
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    write_text_atomic(record, f"{seconds:.1f}\n")
    log(f"[{name}] {seconds:.0f} s -> {folder}")
    return seconds


def train_experts(
    config: DemoConfig, out: str | Path, *, base: str | None = None, log: Callable[[str], None] = print
) -> tuple[dict[str, Path], dict[str, float]]:
    """Fine-tune the demo's math (GSM8K train) and language (NTREX) experts into ``out/experts``.

    Each expert is skipped when its folder is complete, so notebooks can call this to get the
    demo's experts cheaply on a second run.
    """
    from layerswap.finetune import FinetuneConfig, finetune
    from layerswap.io import resolve_model

    out = Path(out)
    base = base or str(resolve_model(config.base))
    data_dir = resolve_data_dir(config.data_dir)
    experts = {"math": out / "experts" / "math", "lang": out / "experts" / "lang"}
    data = {"math": f"gsm8k?limit={config.steps * config.batch_size * 4}", "lang": f"ntrex:{config.language}"}
    common = dict(
        base=base,
        method=config.method,
        steps=config.steps,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        lr=config.lr,
        data_dir=str(data_dir) if data_dir is not None else None,
        overwrite=True,
        quiet=False,
        save_steps=max(config.steps, 1),
        # Embeddings, final norm and LM head stay frozen (the paper's experts leave them to the
        # swap's non-layer policy; with a 262k vocabulary they are also most of the step time).
        train_global=["none"],
    )
    timings: dict[str, float] = {}
    for role in ("math", "lang"):
        cfg = FinetuneConfig(data=[data[role]], out=str(experts[role]), **common)
        timings[f"finetune_{role}"] = _stage(f"fine-tune {role} expert ({data[role]})", experts[role], log, lambda cfg=cfg: finetune(cfg))
    return experts, timings


#: The file a demo folder holds from its start (a rerun resumes only in such a folder).
DEMO_MARKER = "demo.yaml"


def check_demo_outputs(config: DemoConfig, out: str | Path, data_dir: Path | None) -> Path:
    """Refuse, before anything is created, a demo folder or ``--figures`` folder that would harm an input.

    ``out`` passes :func:`~layerswap.io.outputs.check_output` against the base (a folder, or an
    embedded name's cache folder) and the data folder; it may exist only as an earlier demo's folder
    (its ``demo.yaml``, or a ``layerswap.json`` of kind demo), which a rerun resumes, or empty.
    ``--figures`` may exist (its ``demo_*`` figures are replaced) but must not be, or lie inside, an input.
    """
    from layerswap.errors import OutputExistsError
    from layerswap.io.outputs import check_location, check_not_input, check_output, input_paths, written_by_layerswap

    inputs = [config.base, data_dir]
    previous = written_by_layerswap(out) if Path(out).is_dir() and not Path(out).is_symlink() else None
    marker = None if previous is not None and previous.get("kind") == "demo" else DEMO_MARKER
    path = check_output(out, inputs, may_exist=True, resume_marker=marker)
    if config.figures:
        figures = Path(config.figures).expanduser()
        check_not_input(figures, input_paths(inputs), option="--figures", contains=False)
        if figures.exists() and not figures.is_dir():
            raise OutputExistsError(f"--figures {config.figures} is a file, not a folder: choose another path")
        if not figures.exists():
            check_location(figures, option="--figures")
    return path


def run_demo(config: DemoConfig, out: str | Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns the stage timings and the sweep's selection.

    ``out`` and ``config.figures`` are checked first (:func:`check_demo_outputs`): nothing is
    created when either would write over, into or around the base or the data folder.
    """
    from layerswap.analysis import analyze
    from layerswap.analysis.importance import importance
    from layerswap.io import resolve_model, write_provenance
    from layerswap.sweep.loop import run_sweep

    data_dir = resolve_data_dir(config.data_dir)
    out = check_demo_outputs(config, out, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_arg = str(data_dir) if data_dir is not None else None
    if data_dir is None:
        log("no data folder found: datasets come from the Hugging Face Hub (needs network); pass --data-dir to run offline")
    write_text_atomic(out / "demo.yaml", dump_config(config))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    base = str(resolve_model(config.base))
    timings["prepare"] = time.perf_counter() - t0
    lang = config.language
    experts, expert_timings = train_experts(config, out, base=base, log=log)
    timings.update(expert_timings)

    analysis_dir = out / "analysis"
    timings["analyze"] = _stage(
        "analyse deltas",
        analysis_dir,
        log,
        lambda: analyze(base, {"math": str(experts["math"]), "lang": str(experts["lang"])}, out=analysis_dir, overwrite=True),
    )
    importance_dir = out / "importance"
    timings["importance"] = _stage(
        "importance of the base (diagonal Fisher)",
        importance_dir,
        log,
        lambda: importance(
            base,
            {"math": "gsm8k", "lang": f"ntrex:{lang}"},
            examples=config.importance_examples,
            seq_len=config.seq_len,
            data_dir=data_arg,
            out=importance_dir,
            overwrite=True,
        ),
    )
    sweep_cfg = SweepConfig(
        base=base,
        math=str(experts["math"]),
        lang=str(experts["lang"]),
        languages=[lang],
        tasks=["proxy", "flores"],
        select="proxy",
        limit=config.limit,
        shots=2,
        data_dir=data_arg,
        candidates={"boundaries": str(analysis_dir / "boundaries.yaml"), "top_n": config.top_n, "baselines": config.baselines},
    )
    t0 = time.perf_counter()
    sweep = run_sweep(sweep_cfg, out / "sweep", log=log)
    timings["sweep"] = time.perf_counter() - t0
    report = _demo_report(config, out, timings, sweep)
    write_text_atomic(out / "report.md", report)
    write_provenance(out, {"kind": "demo", "config": config.model_dump(mode="json"), "timings_s": timings})
    if config.figures:
        publish_figures(out, Path(config.figures))
    log(f"demo done in {sum(timings.values()):.0f} s: {out / 'report.md'}")
    return {"timings": timings, "selection": sweep["selection"], "report": out / "report.md"}


#: Figures copied from a demo run into the repository's ``figures/`` (name in run -> published name).
PUBLISHED = {
    "analysis/figures/shares.png": "demo_deltas_shares.png",
    "analysis/figures/heatmap_math.png": "demo_deltas_heatmap_math.png",
    "analysis/figures/heatmap_lang.png": "demo_deltas_heatmap_lang.png",
    "analysis/figures/overlap_math_lang_top1.png": "demo_overlap_top1.png",
    "importance/figures/shares.png": "demo_importance_shares.png",
    "sweep/figures/best_vs_baselines_proxy-gold_logprob.png": "demo_best_vs_baselines_proxy.png",
    "sweep/figures/swap_heatmap_proxy-gold_logprob.png": "demo_swap_heatmap_proxy.png",
    "sweep/figures/score_vs_metric_proxy-gold_logprob.png": "demo_score_vs_proxy.png",
    "sweep/figures/best_vs_baselines_flores-bits_per_byte.png": "demo_best_vs_baselines_flores.png",
}


def publish_figures(run: Path, dest: Path) -> list[Path]:
    """Copy the demo's headline figures (PNG and SVG) into ``dest`` under stable names."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for src_rel, name in PUBLISHED.items():
        for ext in (".png", ".svg"):
            src = (run / src_rel).with_suffix(ext)
            if src.exists():
                target = (dest / name).with_suffix(ext)
                shutil.copy2(src, target)
                copied.append(target)
    return copied


def _interval(sweep: dict[str, Any], sel: Any) -> str:
    """`` (95% CI [lo, hi])`` of the leader's headline metric, from the sweep's results."""
    from layerswap.sweep.report import per_candidate

    row = per_candidate(sweep["results"], sel.task, sel.metric).set_index("candidate").loc[sel.winner]
    return "" if row[["ci_low", "ci_high"]].isna().any() else f" (95% CI [{row['ci_low']:.4g}, {row['ci_high']:.4g}])"


def _language_check(sweep: dict[str, Any], sel: Any, language: str) -> list[str]:
    """Did the proxy's leader keep the language? Its FLORES bits per byte against each baseline, paired."""
    comps = sweep["comparisons"]
    rows = comps[(comps["task"] == "flores") & (comps["language"] == "all") & (comps["candidate"] == sel.winner) & comps["role"].isin(["expert", "baseline"])]
    if rows.empty:
        return []
    words = {"better": "lower (better) than", "worse": "higher (worse) than", "indistinguishable": "indistinguishable from", "undetermined": "not comparable with"}
    said = "; ".join(f"{words[r['verdict']]} `{r['reference']}` (diff {r['diff']:+.3g}, 95% CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}], Holm p = {r['p_holm']:.2g})" for _, r in rows.iterrows())
    return [f"Language check (FLORES-{language} bits per byte, paired, lower is better): `{sel.winner}` is {said}."]


def _demo_report(config: DemoConfig, out: Path, timings: dict[str, float], sweep: dict[str, Any]) -> str:
    from layerswap.sweep.compare import verdict_lines

    sel = sweep["selection"]
    lines = [
        "# layerswap demo",
        "",
        f"Base `{config.base}`, {config.method} fine-tuning for {config.steps} steps of {config.batch_size} x {config.seq_len} tokens per expert, "
        f"target language `{config.language}`.",
        "",
        "**What this can and cannot show.** A 270M-parameter base and minutes of CPU training are a working "
        "demonstration of the pipeline, not a replication of the paper's gains: the experts barely learn, so "
        "differences between candidates are small and the analysis may report no clear separation between the "
        "experts. The same command with a 7-8B base and real budgets on a GPU (`--base`, `--steps`, `--limit`) "
        "is the real experiment.",
        "",
        f"Best mean on the proxy (MGSM-{config.language} gold-answer log-likelihood, {config.limit} examples): "
        f"`{sel.winner}` = {sel.value:.4g}{_interval(sweep, sel)}. " + sel.comparison(),
        "",
        *verdict_lines(sweep["comparisons"], sel.task, sel.metric),
        "",
        *_language_check(sweep, sel, config.language),
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [
        "",
        "- [analysis summary](analysis/summary.md) (deltas of the experts)",
        "- [importance summary](importance/summary.md) (diagonal Fisher of the base on each task's data)",
        "- [sweep report](sweep/report.md) (merge-then-evaluate)",
        "",
    ]
    return "\n".join(lines)
