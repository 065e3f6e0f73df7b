"""The demo: the whole pipeline on the embedded default model and real data, end to end.

prepare Gemma 3 270M -> fine-tune a math expert (GSM8K train, written as MGSM's English CoT
answers) and a Swahili expert (NTREX) -> check that each expert learned its own skill, against the
base, with paired intervals (:func:`check_experts`) -> analyse their deltas and the base's
importance on the same data -> sweep the recommended swaps and the baselines with the fast metrics
(MGSM-sw proxy, FLORES-sw bits per byte) -> report, opening with the experts' checks.

The budgets are small so that it runs on a laptop CPU; the same function with a larger base and
budgets (``--base``, ``--steps``, ``--limit``) is the real experiment on a GPU. Every stage writes
into its own folder and is skipped when that folder is complete, so a rerun resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from pydantic import Field, model_validator

from layerswap.config import StrictModel, dump_config, validate_config
from layerswap.io import resolve_data_dir, write_text_atomic
from layerswap.sweep.config import SweepConfig

#: The experts' budgets (chosen in docs/finetune.md "The demo's experts": both measurably learn
#: within the demo's time on 2 CPU cores).
STEPS = 12
SEQ_LEN = 128
MATH_SEQ_LEN = 256
LR = 5e-5
CHECK_EXAMPLES = 24
#: GSM8K test questions 0-249 are MGSM's; the math check scores the ones after them.
MGSM_QUESTIONS = 250
T = TypeVar("T")


class DemoConfig(StrictModel):
    """Budgets of the demo; ``quick`` shrinks them to a CI smoke run of a few minutes."""

    base: str = Field("gemma3-270m", description="Base model folder or embedded name.")
    data_dir: str | None = Field(
        None,
        description="Data folder laid out like ../shared/data (else $LAYERSWAP_DATA_DIR, ./shared/data, ../shared/data, or the Hub).",
    )
    language: str = Field("sw", description="Target language code.")
    method: Literal["full", "lora"] = Field("full", description="full or lora fine-tuning of the experts.")
    steps: int = Field(STEPS, ge=1, description=f"Training steps per expert (default {STEPS}).")
    batch_size: int = Field(4, ge=1, description="Training batch size of the experts.")
    seq_len: int = Field(
        SEQ_LEN, ge=16, description=f"Training sequence length of the language expert's text blocks (default {SEQ_LEN})."
    )
    math_seq_len: int = Field(
        MATH_SEQ_LEN,
        ge=16,
        description=f"Training sequence length of the math expert (default {MATH_SEQ_LEN}: 93% of GSM8K's worked solutions fit whole).",
    )
    lr: float | None = Field(LR, description=f"Learning rate of the experts (default {LR}).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training precision of the experts; auto: bf16 autocast where the CPU multiplies bf16 natively (or a bf16 GPU), else fp32.",
    )
    check_examples: int = Field(
        CHECK_EXAMPLES,
        ge=2,
        description=f"Examples of each expert's check against the base (GSM8K test beyond MGSM's 250; FLORES) (default {CHECK_EXAMPLES}).",
    )
    importance_examples: int = Field(16, ge=1, description="Examples per task for the base's diagonal Fisher.")
    limit: int = Field(12, ge=1, description="Examples per evaluation task in the sweep (the finals; halving blocks are half of it).")
    screen_examples: int | None = Field(
        None, ge=1, description="Most examples of the proxy (the screen) halving spends on one candidate (default 2 x limit)."
    )
    finalists: int = Field(2, ge=1, description="Last survivors of halving that get MGSM (the target) and FLORES.")
    final_baselines: list[str] = Field(
        default_factory=list,
        description="Baselines that also get the target whatever halving did, e.g. linear and ties (repeat the flag).",
    )
    top_n: int = Field(4, ge=1, description="Recommended swap candidates to evaluate.")
    baselines: list[str] = Field(
        default_factory=lambda: ["base", "math", "lang", "linear", "ties", "dare_ties", "revert"],
        description="Baselines of the sweep (repeat the flag).",
    )
    figures: str | None = Field(None, description="Also copy the headline figures into this folder (the repo's figures/).")

    @model_validator(mode="after")
    def _sweep_settings_fit(self) -> "DemoConfig":
        """The sweep's settings, checked before anything is created (not hours later at the sweep stage):
        a baseline the target must see is swept, and the screen's examples hold at least one block."""
        absent = [b for b in self.final_baselines if b not in self.baselines]
        if absent:
            raise ValueError(f"final_baselines names {absent[0]!r}, which is not among the baselines ({', '.join(self.baselines)}): add it there or drop it")
        block = max(1, self.limit // 2)
        if self.screen_examples is not None and self.screen_examples < block:
            raise ValueError(
                f"screen_examples {self.screen_examples} is smaller than one halving block (limit / 2 = {block} examples): raise it or lower the limit"
            )
        return self

    @classmethod
    def quick_config(cls, **overrides: Any) -> "DemoConfig":
        values: dict[str, Any] = {
            "steps": 2,
            "batch_size": 2,
            "seq_len": 64,
            "math_seq_len": 96,
            "check_examples": 4,
            "importance_examples": 2,
            "limit": 3,
            "top_n": 2,
            "baselines": ["base", "math", "lang", "ties"],
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return validate_config(cls, values, source="demo options")


def _seconds_record(folder: Path) -> Path:
    """Where a stage's seconds are kept, beside its folder (so a resumed demo still reports them)."""
    return folder.parent / f".{folder.name}.seconds"


def _stage(name: str, folder: Path, log: Callable[[str], None], run: Callable[[], Any]) -> float:
    """Run a stage unless its output folder is complete (marked by ``layerswap.json``).

    A stage's duration is kept next to its folder, so a resumed demo still reports what each
    stage cost when it ran.
    """
    record = _seconds_record(folder)
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


def _resumable_stage(folder: Path, run: Callable[[], T]) -> tuple[float, T]:
    """Run a stage that resumes inside itself (the sweep keeps every evaluated unit) and its result; its
    seconds add up over every run of it in this folder, an interrupted one included (recorded on the
    way out), so a resumed demo reports what the stage cost in all, not the last run's reload."""
    record = _seconds_record(folder)
    before = float(record.read_text()) if record.exists() else 0.0
    t0 = time.perf_counter()
    try:
        result = run()
    finally:
        seconds = before + time.perf_counter() - t0
        write_text_atomic(record, f"{seconds:.1f}\n")
    return seconds, result


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
        precision=training_precision(config.precision),
        data_dir=str(data_dir) if data_dir is not None else None,
        overwrite=True,
        quiet=False,
        save_steps=max(config.steps, 1),
        # A short warm-up: Adam's first full-size step on all 18 layers at once spikes the loss (seen at 1e-4).
        warmup_steps=max(config.steps // 6, 0),
        # Embeddings, final norm and LM head stay frozen (the paper's experts leave them to the
        # swap's non-layer policy; with a 262k vocabulary they are also most of the step time).
        train_global=["none"],
    )
    timings: dict[str, float] = {}
    for role in ("math", "lang"):
        seq_len = config.math_seq_len if role == "math" else config.seq_len
        cfg = FinetuneConfig(data=[data[role]], out=str(experts[role]), **{**common, "seq_len": seq_len})
        timings[f"finetune_{role}"] = _stage(
            f"fine-tune {role} expert ({data[role]})", experts[role], log, lambda cfg=cfg: finetune(cfg)
        )
    return experts, timings


def training_precision(choice: str) -> str:
    """``auto`` -> ``bf16`` on a CPU that multiplies bf16 natively (twice as fast as fp32 there), else
    fine-tuning's own ``auto`` (bf16 on a capable GPU, fp32 on other CPUs)."""
    import torch

    from layerswap.finetune.trainer import cpu_bf16_is_fast

    if choice == "auto" and not torch.cuda.is_available() and cpu_bf16_is_fast():
        return "bf16"
    return choice


# --------------------------------------------------------------------------------------------
# Did each expert learn its skill? Checked against the base before anything is merged.
# --------------------------------------------------------------------------------------------


def math_check_pairs(n: int, data_dir: str | Path | None) -> list[tuple[str, str, str]]:
    """``(id, prompt, continuation)`` of GSM8K test questions 250..250+n-1 (MGSM uses 0-249), in the
    format the math expert trains on: ``Question: ...\nStep-by-Step Answer:`` and the English worked
    solution ending ``The answer is N.``."""
    from layerswap.errors import DataError
    from layerswap.evaluate.tasks.gsm8k import load_rows
    from layerswap.evaluate.tasks.proxy_cot import en_cot_solution
    from layerswap.io.records import MATH_PROMPT

    rows = load_rows("test", data_dir)[MGSM_QUESTIONS : MGSM_QUESTIONS + n]
    if len(rows) < 2:
        raise DataError(f"GSM8K test has no questions beyond MGSM's first {MGSM_QUESTIONS}: the math check needs some")
    return [
        (f"gsm8k-test-{MGSM_QUESTIONS + i}", MATH_PROMPT.format(question=q.strip()), " " + en_cot_solution(a))
        for i, (q, a) in enumerate(rows)
    ]


def _scores(model: str | Path, tasks: list[str], n: int, language: str, data_dir: str | Path | None) -> Any:
    """Per-example scores of one model: ``math`` (log-likelihood per token of the gold worked solution)
    and/or ``flores`` (bits and bytes of each FLORES devtest sentence), as a frame."""
    import pandas as pd

    from layerswap.evaluate.loglik import loglikelihood
    from layerswap.evaluate.result import as_lm
    from layerswap.evaluate.tasks.flores import evaluate_flores

    lm = as_lm(str(model))
    frames = []
    if "math" in tasks:
        pairs = math_check_pairs(n, data_dir)
        scored = loglikelihood(lm, [(p, c) for _, p, c in pairs], batch_size=4, desc="math check")
        frames.append(
            pd.DataFrame(
                {
                    "task": "math",
                    "id": [i for i, _, _ in pairs],
                    "score": [s.logprob / s.n_tokens for s in scored],
                    "num": [s.logprob for s in scored],
                    "den": [float(s.n_tokens) for s in scored],
                }
            )
        )
    if "flores" in tasks:
        records = evaluate_flores(lm, [language], limit=n, data_dir=data_dir).records
        frames.append(
            pd.DataFrame(
                {
                    "task": "flores",
                    "id": [r["id"] for r in records],
                    "score": [r["bits"] / r["bytes"] for r in records],
                    "num": [r["bits"] for r in records],
                    "den": [float(r["bytes"]) for r in records],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def check_experts(
    config: DemoConfig, base: str | Path, experts: dict[str, Path], out: str | Path, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Each expert against the base on its own skill, paired on the same examples; writes ``out`` and returns the checks.

    - math: mean over GSM8K test questions 250.. (never MGSM's) of the per-token log-likelihood of
      the gold worked solution (nats per token; higher is better), expert minus base;
    - language: FLORES-<lang> devtest bits per byte (lower is better), expert minus base, the ratio
      resampled with each sentence's bits and bytes together.

    Each with a 95% paired-bootstrap interval and a paired permutation p-value (:mod:`layerswap.stats`).
    An expert *learned* when the interval excludes zero on the right side.
    """
    import pandas as pd

    from layerswap.io import write_provenance
    from layerswap.stats import paired_difference, paired_ratio_difference

    out = Path(out)
    data_dir = resolve_data_dir(config.data_dir)
    n = config.check_examples
    wanted = {"base": ["math", "flores"], "math": ["math"], "lang": ["flores"]}
    paths = {"base": Path(base), **experts}
    frames = []
    for role, tasks in wanted.items():
        log(f"  scoring {role} on {' and '.join(tasks)} ({n} examples)")
        frames.append(_scores(paths[role], tasks, n, config.language, data_dir).assign(model=role))
    scores = pd.concat(frames, ignore_index=True)

    def side(role: str, task: str) -> Any:
        return scores[(scores["model"] == role) & (scores["task"] == task)].set_index("id").sort_index()

    m_exp, m_base = side("math", "math"), side("base", "math")
    math = paired_difference(m_exp["score"].to_numpy(), m_base.loc[m_exp.index, "score"].to_numpy())
    l_exp, l_base = side("lang", "flores"), side("base", "flores").loc[side("lang", "flores").index]
    lang = paired_ratio_difference(
        l_exp["num"].to_numpy(), l_exp["den"].to_numpy(), l_base["num"].to_numpy(), l_base["den"].to_numpy()
    )
    checks = {
        "math": {
            **math.as_dict(),
            "metric": "gold worked solution log-likelihood per token (nats)",
            "higher_is_better": True,
            "data": f"GSM8K test questions {MGSM_QUESTIONS}-{MGSM_QUESTIONS + len(m_exp) - 1} (after MGSM's {MGSM_QUESTIONS})",
            "base": float(m_base["score"].mean()),
            "expert": float(m_exp["score"].mean()),
            "learned": bool(math.low > 0),
        },
        "lang": {
            **lang.as_dict(),
            "metric": "bits per byte",
            "higher_is_better": False,
            "data": f"FLORES-{config.language} devtest, first {len(l_exp)} sentences",
            "base": float(l_base["num"].sum() / l_base["den"].sum()),
            "expert": float(l_exp["num"].sum() / l_exp["den"].sum()),
            "learned": bool(lang.high < 0),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / "scores.csv", index=False)
    write_text_atomic(out / "checks.json", json.dumps(checks, indent=2) + "\n")
    write_text_atomic(out / "checks.md", "\n".join(check_lines(checks)) + "\n")
    write_provenance(out, {"kind": "demo-checks", "examples": n, "checks": checks})
    for line in check_lines(checks):
        log(line)
    return checks


def check_lines(checks: dict[str, Any]) -> list[str]:
    """The report's two opening lines: how much each expert gained on its own skill, or that it did not learn."""
    m, g = checks["math"], checks["lang"]
    math_said = (
        f"math expert: {m['diff']:+.3f} nats per token [95% CI {m['low']:+.3f}, {m['high']:+.3f}] over the base on the "
        f"log-likelihood of the gold worked solution ({m['data']}; n = {m['n']}, paired, permutation p = {m['p_value']:.2g}; "
        f"base {m['base']:.3f}, expert {m['expert']:.3f})"
    )
    lang_said = (
        f"language expert: {g['diff']:+.3f} [95% CI {g['low']:+.3f}, {g['high']:+.3f}] bits per byte against the base "
        f"({g['data']}; n = {g['n']}, paired, permutation p = {g['p_value']:.2g}; base {g['base']:.3f}, expert {g['expert']:.3f}; lower is better)"
    )
    if not m["learned"]:
        math_said = "**the math expert did not measurably learn**: " + math_said + " (the interval includes 0 or lies below it)"
    if not g["learned"]:
        lang_said = (
            "**the language expert did not measurably learn**: " + lang_said + " (the interval includes 0 or lies above it)"
        )
    return [math_said + ";", lang_said + "."]


#: The file a demo folder holds from its start (a rerun resumes only in such a folder).
DEMO_MARKER = "demo.yaml"


#: The folders the demo's stages write inside its output folder.
STAGE_FOLDERS = ("experts", "checks", "analysis", "importance", "sweep")


def check_demo_outputs(config: DemoConfig, out: str | Path, data_dir: Path | None) -> Path:
    """Refuse, before anything is created, a demo folder or ``--figures`` folder that would harm an input.

    ``out`` passes :func:`~layerswap.io.outputs.check_output` against the base (a folder, or an
    embedded name's cache folder) and the data folder; it may exist only as an earlier demo's folder
    (its ``demo.yaml``, or a ``layerswap.json`` of kind demo), which a rerun resumes, or empty.
    ``--figures`` may exist (its ``demo_*`` figures are replaced) but must not be, or lie inside, an input.
    """
    from layerswap.errors import InputPathError, OutputExistsError
    from layerswap.io.outputs import check_location, check_not_input, check_output, input_paths, written_by_layerswap

    inputs = [config.base, data_dir]
    previous = written_by_layerswap(out) if Path(out).is_dir() and not Path(out).is_symlink() else None
    marker = None if previous is not None and previous.get("kind") == "demo" else DEMO_MARKER
    path = check_output(out, inputs, may_exist=True, resume_marker=marker)
    for stage in STAGE_FOLDERS:  # a stage folder that is a link would send the stage's writes elsewhere
        if (path / stage).is_symlink():
            raise InputPathError(f"{path / stage} is a symbolic link: remove it or choose another --out")
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
    checks_dir = out / "checks"
    timings["check_experts"] = _stage(
        "check each expert against the base", checks_dir, log, lambda: check_experts(config, base, experts, checks_dir, log=log)
    )
    checks = json.loads((checks_dir / "checks.json").read_text())

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
    # Successive halving on the proxy (up to screen_examples, default 2 x limit, in blocks of limit / 2);
    # the last `finalists` survivors, the experts, the best baseline and `final_baselines` then get MGSM
    # exact match (the target: generation, the slow part on a CPU, so only these few) and FLORES (the
    # language check) on `limit` examples.
    sweep_cfg = SweepConfig(
        base=base,
        math=str(experts["math"]),
        lang=str(experts["lang"]),
        languages=[lang],
        tasks=["proxy", "flores", "mgsm"],
        select="proxy",
        screen="proxy",
        target="mgsm",
        finalists=config.finalists,
        final_baselines=config.final_baselines,
        limit=config.limit,
        shots=2,
        max_new_tokens=96,
        data_dir=data_arg,
        candidates={
            "boundaries": str(analysis_dir / "boundaries.yaml"),
            "top_n": config.top_n,
            "baselines": config.baselines,
            "search": "halving",
            "halving": {"block": max(1, config.limit // 2), "max_examples": config.screen_examples or 2 * config.limit},
        },
    )
    timings["sweep"], sweep = _resumable_stage(out / "sweep", lambda: run_sweep(sweep_cfg, out / "sweep", log=log))
    report = _demo_report(config, out, timings, sweep, checks)
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
    "sweep/figures/halving_rounds_proxy.png": "demo_halving_rounds.png",
    "sweep/figures/screen_vs_target_proxy_mgsm.png": "demo_screen_vs_target.png",
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
    rows = comps[
        (comps["task"] == "flores")
        & (comps["language"] == "all")
        & (comps["candidate"] == sel.winner)
        & comps["role"].isin(["expert", "baseline"])
    ]
    if rows.empty:
        return []
    words = {
        "better": "lower (better) than",
        "worse": "higher (worse) than",
        "indistinguishable": "indistinguishable from",
        "undetermined": "not comparable with",
    }
    said = "; ".join(
        f"{words[r['verdict']]} `{r['reference']}` (diff {r['diff']:+.3g}, 95% CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}], Holm p = {r['p_holm']:.2g})"
        for _, r in rows.iterrows()
    )
    return [f"Language check (FLORES-{language} bits per byte, paired, lower is better): `{sel.winner}` is {said}."]


def _demo_report(
    config: DemoConfig, out: Path, timings: dict[str, float], sweep: dict[str, Any], checks: dict[str, Any] | None = None
) -> str:
    from layerswap.sweep.compare import verdict_lines

    sel = sweep["selection"]
    lines = [
        "# layerswap demo",
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
        f"Best mean on the proxy (MGSM-{config.language} gold-answer log-likelihood, halving over up to {config.screen_examples or 2 * config.limit} examples): "
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
