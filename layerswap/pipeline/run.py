"""The demo as a recipe, read top to bottom: prepare the base -> fine-tune a math and a language
expert -> check each against the base -> analyse their deltas and the base's importance (and the
lenses named in ``candidate_source``) -> sweep the recommended swaps and the baselines -> report. With ``seeds: N`` the experts are trained N times and
the sweep runs once per seed (``sweep``, ``sweep-s1``, ...; :mod:`layerswap.sweep.seeds`); the checks
and the analysis read seed 0's experts, whose recommended swaps every seed's sweep evaluates.

Every stage writes into its own folder and is skipped when that folder is complete, so a rerun
resumes; each records its seconds and peak memory beside its folder (:mod:`layerswap.pipeline.stages`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layerswap.config import dump_config
from layerswap.finetune.config import seed_path
from layerswap.io import resolve_data_dir, write_text_atomic
from layerswap.pipeline.checks import check_experts
from layerswap.pipeline.config import DemoConfig, sweep_config
from layerswap.pipeline.experts import train_experts
from layerswap.pipeline.outputs import DEMO_MARKER, check_demo_outputs, publish_figures
from layerswap.pipeline.report import demo_report, sweep_reads
from layerswap.pipeline.stages import StageCost, peak_rss_mib, reset_peak_rss, resumable_stage, stage
from layerswap.sweep.seeds import SEEDS_FILE, seed_comparisons


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
    write_text_atomic(out / DEMO_MARKER, dump_config(config))

    reset_peak_rss()
    t0 = time.perf_counter()
    base = str(resolve_model(config.base))
    costs: dict[str, StageCost] = {"prepare": StageCost(round(time.perf_counter() - t0, 1), round(peak_rss_mib(), 1))}

    experts, expert_costs = train_experts(config, out, base=base, log=log)
    costs.update(expert_costs)
    more_seeds = {}  # seeds 1..N-1: their experts, for their own sweeps (checks and analysis read seed 0's)
    for seed in range(1, config.seeds):
        more_seeds[seed], seed_costs = train_experts(config, out, base=base, log=log, seed=seed)
        costs.update(seed_costs)

    checks_dir = out / "checks"
    costs["check_experts"] = stage(
        "check each expert against the base", checks_dir, log, lambda: check_experts(config, base, experts, checks_dir, log=log)
    )
    checks = json.loads((checks_dir / "checks.json").read_text())

    analysis_dir = out / "analysis"
    costs["analyze"] = stage(
        "analyse deltas",
        analysis_dir,
        log,
        lambda: analyze(base, {"math": str(experts["math"]), "lang": str(experts["lang"])}, out=analysis_dir, overwrite=True),
    )
    boundaries = config.boundary_sources(out)
    sweep_cfg = sweep_config(
        config, base=base, math=str(experts["math"]), lang=str(experts["lang"]), boundaries=boundaries, data_dir=data_arg
    )
    importance_dir = out / "importance"
    costs["importance"] = stage(
        "importance of the base (diagonal Fisher)",
        importance_dir,
        log,
        lambda: importance(
            base,
            {"math": "gsm8k", "lang": f"ntrex:{config.language}"},
            examples=config.importance_examples,
            seq_len=config.seq_len,
            data_dir=data_arg,
            out=importance_dir,
            overwrite=True,
            device=sweep_cfg.device or "cpu",  # the sweep's device (cuda for a GPU run)
        ),
    )

    if config.lenses():
        lenses_dir = out / "lenses"
        costs["lenses"] = stage(
            f"lenses ({', '.join(config.lenses())})",
            lenses_dir,
            log,
            lambda: demo_lenses(config, base, experts, lenses_dir, data_dir=data_arg, device=sweep_cfg.device or "cpu"),
        )

    costs["sweep"], sweep = resumable_stage(out / "sweep", lambda: run_sweep(sweep_cfg, out / "sweep", log=log))
    sweeps = [sweep]
    for seed, seed_experts in more_seeds.items():  # the same sweep (seed 0's candidates) on each seed's experts
        cfg = sweep_config(config, base=base, math=str(seed_experts["math"]), lang=str(seed_experts["lang"]),
                           boundaries=sweep_cfg.candidates.boundaries, data_dir=data_arg)  # fmt: skip
        folder = Path(seed_path(str(out / "sweep"), seed))
        costs[f"sweep_s{seed}"], seed_sweep = resumable_stage(folder, lambda cfg=cfg, folder=folder: run_sweep(cfg, folder, log=log))
        sweeps.append(seed_sweep)
    tasks = [t for t in (sweep_cfg.decision_task(), sweep_cfg.target) if t is not None]
    seed_table = seed_comparisons(sweeps, tasks, decision_task=sweep_cfg.decision_task())
    write_text_atomic(out / SEEDS_FILE, seed_table.to_csv(index=False))

    write_text_atomic(out / "report.md", demo_report(config, out, costs, sweep, checks))
    write_provenance(
        out,
        {
            "kind": "demo",
            "config": config.model_dump(mode="json"),
            "timings_s": {name: cost.seconds for name, cost in costs.items()},
            "peak_rss_mib": {name: cost.peak_rss_mib for name, cost in costs.items()},
        },
    )
    if config.figures:
        publish_figures(out, Path(config.figures))
    log(f"demo done in {sum(c.seconds for c in costs.values()):.0f} s: {out / 'report.md'}")
    return {
        "timings": {name: cost.seconds for name, cost in costs.items()},
        "selection": sweep_reads(sweep).selection,
        "report": out / "report.md",
    }


def demo_lenses(
    config: DemoConfig, base: str, experts: dict[str, Path], out: Path, *, data_dir: str | None, device: str
) -> Any:
    """The lenses named in ``candidate_source`` on the base and seed 0's experts, each task's data as the
    experts were trained on (GSM8K train, NTREX), written to ``out`` for the sweep's candidates."""
    from layerswap.analysis.lenses import run_lenses

    return run_lenses(
        base,
        {"math": str(experts["math"]), "lang": str(experts["lang"])},
        config.lenses(),
        data={"math": "gsm8k", "lang": f"ntrex:{config.language}"},
        out=out,
        overwrite=True,
        data_dir=data_dir,
        examples=config.lens_examples,
        seq_len=config.seq_len,
        device=device,
        target_lang=config.language,
        math_expert="math",
        lang_expert="lang",
    )
