"""``layerswap demo --dry-run``: every stage planned, every input checked, time and memory estimated,
nothing trained or written.

The estimates are arithmetic on the base's parameter count N (read from the base when it is at hand,
else the config's ``base_params_b``) and each stage's token counts, with the assumptions named in
:data:`ASSUMPTIONS` and beside every row; the analysis row scales the measured load benchmark
(benchmarks/RESULTS.md). They are orders of magnitude for planning a GPU run, not measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerswap.errors import LayerswapError
from layerswap.pipeline.config import DemoConfig, sweep_config

#: What the estimates rest on (an H100 80 GB SXM; each figure a stated assumption, not a measurement here).
ASSUMPTIONS = {
    "train_flops_per_s": 350e12,  # bf16 at ~35% of the H100's 989 TFLOP/s dense peak (a typical training MFU)
    "decode_bytes_per_s": 2.0e12,  # ~60% of the H100's 3.35 TB/s HBM: each generated token reads the weights once
    "prompt_tokens": 300,  # a few-shot MGSM prompt or a worked solution, per example
    "disk_bytes_per_s": 1.0e9,  # reading a checkpoint into memory
    "analysis_s_per_param": 779.6 / 3.0e9,  # measured: analyze of a 3e9 triple, 780 s on 2 CPU cores (load benchmark)
    # measured: peak RSS = two float32 buffers of the largest tensor + ~1.3 GiB (5.23 GiB at Llama-3.1-8B's widths,
    # whose 525M-entry embedding is 6.5% of N: the share assumed here), flat in depth
    "analysis_largest_share": 525_336_576 / 8.03e9,
    "analysis_base_gib": 1.3,
}
GIB = 1024**3


@dataclass(frozen=True)
class InputCheck:
    what: str
    ok: bool
    note: str


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    work: str
    hours_1: float  # on one GPU
    hours_8: float  # on eight

    def minutes(self, hours: float) -> str:
        return "<1" if hours * 60 < 1 else f"{hours * 60:,.0f}"

    memory: str
    rests_on: str


def _check(what: str, run: Callable[[], Any]) -> InputCheck:
    try:
        note = run()
        return InputCheck(what, True, str(note or "found"))
    except LayerswapError as exc:
        return InputCheck(what, False, str(exc))


def check_inputs(config: DemoConfig, out: str | Path) -> tuple[list[InputCheck], float | None]:
    """Each input every stage reads, opened or read a few records deep (nothing loaded whole), and N."""
    from layerswap.evaluate.mgsm import load_examples
    from layerswap.evaluate.tasks.flores import load_lines
    from layerswap.evaluate.tasks.gsm8k_solution import solution_pairs
    from layerswap.io import describe, language, open_checkpoint, resolve_data_dir
    from layerswap.io.records import load_records
    from layerswap.pipeline.outputs import check_demo_outputs

    params: list[float] = []

    def base() -> str:
        info = describe(open_checkpoint(config.base))
        params.append(float(info["num_parameters"]))
        return f"{info['architecture']}, {info['num_layers']} layers, {info['num_parameters'] / 1e9:.2f}e9 parameters"

    data = config.data_dir
    checks = [
        _check(f"base {config.base}", base),
        _check("data folder", lambda: str(resolve_data_dir(data, required=True))),
        _check("math expert's data (gsm8k train)", lambda: f"{len(load_records('gsm8k', data_dir=data))} records"),
        _check(
            f"language expert's data (ntrex:{config.language})",
            lambda: f"{len(load_records(f'ntrex:{config.language}', data_dir=data))} records",
        ),
        _check("math check (GSM8K test 250..)", lambda: f"{len(solution_pairs(config.check_examples, data))} questions"),
        _check(
            f"language check and sweep (FLORES-{config.language})",
            lambda: f"{len(load_lines(language(config.language).flores, resolve_data_dir(data, required=True)))} sentences",
        ),
        _check(
            f"sweep target (MGSM-{config.language})", lambda: f"{len(load_examples(config.language, data_dir=data))} questions"
        ),
        _check(
            f"output folder {out}",
            lambda: f"{check_demo_outputs(config, out, resolve_data_dir(data))} (new, empty or an earlier demo's: resumed)",
        ),
    ]
    n = params[0] if params else (config.base_params_b * 1e9 if config.base_params_b else None)
    return checks, n


def estimate_stages(config: DemoConfig, n: float) -> list[StageEstimate]:
    """Time on one and on eight GPUs, and memory, per stage, for a base of ``n`` parameters."""
    a = ASSUMPTIONS
    sweep = sweep_config(config, base="b", math="m", lang="l", boundaries=None, data_dir=None)
    lora = config.method == "lora"
    rows: list[StageEstimate] = []
    for role, seq in (("math", config.math_seq_len), ("lang", config.seq_len)):
        tokens = config.steps * config.batch_size * seq * config.seeds  # every seed trains its own expert
        flops = (4 if lora else 6) * n * tokens  # forward 2N, backward 4N per token (2N without weight gradients)
        hours = flops / a["train_flops_per_s"] / 3600
        state = 2 * n if lora else 12 * n  # bf16 weights (+ bf16 grads and fp32 Adam moments for full)
        memory = f"{state / GIB:.0f} GiB + activations" + (
            ""
            if lora
            else f" (1 GPU: {'fits' if state < 70 * GIB else 'does NOT fit 80 GB; shard over 8: ' + f'{state / 8 / GIB:.0f} GiB each'})"
        )
        rows.append(
            StageEstimate(
                f"finetune_{role}",
                f"{config.steps} steps x {config.batch_size} x {seq} tokens" + (f", {config.seeds} seeds" if config.seeds > 1 else ""),
                hours,
                hours / 8,
                memory,
                f"{4 if lora else 6}N FLOPs per token at {a['train_flops_per_s'] / 1e12:.0f} TFLOP/s per GPU",
            )
        )
    load = 2 * n / a["disk_bytes_per_s"]
    check_tokens = 4 * config.check_examples * a["prompt_tokens"]  # base on two checks, each expert on one
    hours = (3 * load + 2 * n * check_tokens / a["train_flops_per_s"]) / 3600
    rows.append(
        StageEstimate(
            "check_experts",
            f"3 models x {config.check_examples} examples",
            hours,
            hours,
            f"{2 * n / GIB:.0f} GiB (bf16 weights)",
            "loading 3 checkpoints + 2N FLOPs per token",
        )
    )
    hours = a["analysis_s_per_param"] * n / 3600
    rows.append(
        StageEstimate(
            "analyze",
            "every tensor of 3 models, streamed",
            hours,
            hours,
            f"~{2 * 4 * a['analysis_largest_share'] * n / GIB + a['analysis_base_gib']:.1f} GiB RAM (CPU)",
            "measured 3e9 load benchmark, linear in N; memory: 2 x the embedding in float32 (6.5% of N); CPU, not GPU",
        )
    )
    tokens = 2 * config.importance_examples * config.seq_len
    hours = (load + 6 * n * tokens / a["train_flops_per_s"]) / 3600
    held = (6 + 8) * n
    fits = "" if held < 70 * GIB else ": more than one 80 GB GPU holds (keep_fisher streams the Fishers to disk)"
    rows.append(
        StageEstimate(
            "importance",
            f"2 tasks x {config.importance_examples} x {config.seq_len} tokens",
            hours,
            hours,
            f"{held / GIB:.0f} GiB (weights, fp32 grads, 2 fp32 Fishers){fits}",
            "6N FLOPs per token; Fisher float32 per task",
        )
    )
    if config.lenses():
        per_model = 2 * config.lens_examples * config.seq_len  # both tasks' texts through each model
        flops = 3 * 2 * n * per_model + (6 * n * per_model if "grad" in config.lenses() else 0)
        hours = (3 * load + flops / a["train_flops_per_s"]) / 3600
        rows.append(
            StageEstimate(
                "lenses",
                f"{', '.join(config.lenses())}: 3 models x 2 tasks x {config.lens_examples} x {config.seq_len} tokens",
                hours,
                hours,
                f"{4 * n / GIB:.0f} GiB (one model's float32 weights at a time)" + (" + fp32 grads" if "grad" in config.lenses() else ""),
                "one shared forward pass per model (2N FLOPs per token), the gradient lens a backward on the base (6N)",
            )
        )
    candidates = config.top_n * len(config.candidate_source) + len(sweep.candidates.baselines)
    screen = candidates * (sweep.screen_examples() or config.limit) * len(sweep.languages)
    finals = (sweep.finalists + 3 + len(sweep.final_baselines)) * config.limit * len(sweep.languages)
    step_s = 2 * n / a["decode_bytes_per_s"]
    decode_s = finals * sweep.max_new_tokens * step_s / sweep.batch_size  # sequences generated together
    forward_s = 2 * n * (screen + finals) * a["prompt_tokens"] / a["train_flops_per_s"]
    hours = config.seeds * (3 * load + decode_s + forward_s) / 3600  # one sweep per seed
    files = 2 * 3 * n  # base and two experts in bf16, read through the page cache, never held by the process
    rows.append(
        StageEstimate(
            "sweep",
            f"<= {screen} proxy + {finals} MGSM/FLORES example-evaluations" + (f", x {config.seeds} seeds" if config.seeds > 1 else ""),
            hours,
            config.seeds * (3 * load + (decode_s + forward_s) / 8) / 3600,
            f"{2 * n / GIB:.0f} GiB GPU + one tensor's merge in RAM ({sweep.cache_dtype}); the {files / GIB:.0f} GiB of "
            "checkpoints stay in the page cache (reclaimable)",
            f"decoding reads 2N bytes per step at {a['decode_bytes_per_s'] / 1e12:.0f} TB/s, batch {sweep.batch_size}",
        )
    )
    return rows


def mgsm_power_line(n: int) -> str:
    """What an MGSM limit of ``n`` paired questions can separate (80% power, exact McNemar, psi = 0.2)."""
    from layerswap.power import mcnemar_power

    points = next((d for d in range(1, 21) if mcnemar_power(n, d / 100, 0.2) >= 0.8), None)
    reach = f"a difference of {points} points or more" if points else "no difference under 20 points"
    return f"MGSM on {n} paired questions: 80% power for {reach} between two candidates (exact McNemar, discordance 0.2; docs/evaluate.md)"


def plan_demo(config: DemoConfig, out: str | Path) -> tuple[str, bool]:
    """The dry run's report and whether every input was found."""
    checks, n = check_inputs(config, out)
    lines = ["# layerswap demo --dry-run: nothing is trained or written", "", "## Inputs", ""]
    lines += [f"- [{'ok' if c.ok else 'MISSING'}] {c.what}: {c.note}" for c in checks]
    lines += ["", "## Stages", ""]
    if n is None:
        lines.append("No estimate: the base is not at hand and the config gives no base_params_b.")
    else:
        lines += [
            f"Base of {n / 1e9:.2f}e9 parameters; estimates for H100 80 GB GPUs (assumptions in layerswap/pipeline/plan.py):",
            "",
            "| stage | work | minutes, 1 GPU | minutes, 8 GPUs | memory | rests on |",
            "|---|---|---:|---:|---|---|",
        ]
        rows = estimate_stages(config, n)
        lines += [
            f"| {r.stage} | {r.work} | {r.minutes(r.hours_1)} | {r.minutes(r.hours_8)} | {r.memory} | {r.rests_on} |"
            for r in rows
        ]
        lines += ["", f"In all: {sum(r.hours_1 for r in rows):.1f} h on one GPU, {sum(r.hours_8 for r in rows):.1f} h on eight."]
    lines += ["", mgsm_power_line(config.limit)]
    missing = [c.what for c in checks if not c.ok]
    lines += [
        "",
        f"{len(missing)} input(s) missing ({'; '.join(missing)}): the run would stop at the first."
        if missing
        else "Every input is in place.",
    ]
    return "\n".join(lines) + "\n", not missing
