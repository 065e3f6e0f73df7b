"""Sweep search settings (issue 16): one line each, before any model is loaded and before anything is written.

An unknown search mode (in the YAML or as ``--candidates.search``), a screen or target task the sweep does not
run, fewer than one finalist, a ``final_baselines`` entry the sweep does not build, and halving budgets smaller than one block (``max_examples`` below the
block, a ``budget`` below one block, a budget that cannot pay for the first round of every candidate).
"""

from __future__ import annotations

from faults_catalogue import Case, Env


def build(env: Env) -> None:
    """Nothing to build: every case is a sweep YAML over the good tiny models."""


def _sweep(env: Env, extra: str, *flags: str) -> list[str]:
    body = f"base: {env.base}\nmath: {env.math}\nlang: {env.lang}\nlanguages: [sw]\ntasks: [proxy, mgsm]\nlimit: 8\n{extra}"
    return ["sweep", env.yaml("sweep.yaml", body), "--out", env.out, *flags]


HALVING = "candidates: {search: halving, grid: {bottom: [1], top: [1], transition: [0]}, baselines: [base, math], halving: %s}\n"

CASES: list[Case] = [
    Case(
        "sweep-search-unknown",
        "sweep cfg.yaml (candidates: {search: greedy})",
        lambda e: _sweep(e, "candidates: {search: greedy}\n"),
        "ConfigError",
        "unknown search mode 'greedy'",
        "valid modes are exhaustive, halving",
    ),
    Case(
        "sweep-search-flag-unknown",
        "sweep cfg.yaml --candidates.search random",
        lambda e: _sweep(e, "", "--candidates.search", "random"),
        "ConfigError",
        "unknown search mode 'random'",
        "valid modes are exhaustive, halving",
    ),
    Case(
        "sweep-screen-not-run",
        "sweep cfg.yaml (screen: flores, tasks: [proxy, mgsm])",
        lambda e: _sweep(e, "screen: flores\n"),
        "ConfigError",
        "screen task 'flores' is not among the sweep's tasks",
        "add it to tasks or pick one of them",
    ),
    Case(
        "sweep-target-not-run",
        "sweep cfg.yaml (target: gsm8k, tasks: [proxy, mgsm])",
        lambda e: _sweep(e, "target: gsm8k\n"),
        "ConfigError",
        "target task 'gsm8k' is not among the sweep's tasks",
        "add it to tasks or pick one of them",
    ),
    Case(
        "sweep-finalists-zero",
        "sweep cfg.yaml (finalists: 0)",
        lambda e: _sweep(e, "finalists: 0\n"),
        "ConfigError",
        "finalists 0 must be at least 1",
        "needs a candidate",
    ),
    Case(
        "sweep-final-baseline-not-swept",
        "sweep cfg.yaml (final_baselines: [ties], baselines: [base, math])",
        lambda e: _sweep(e, HALVING % "{block: 4}" + "final_baselines: [ties]\n"),
        "ConfigError",
        "final_baselines names 'ties', which is not among candidates.baselines",
        "add it there or drop it",
    ),
    Case(
        "sweep-halving-block-too-big",
        "sweep cfg.yaml (limit: 8, halving: {block: 16})",
        lambda e: _sweep(e, HALVING % "{block: 16}"),
        "ConfigError",
        "is smaller than one block (16 examples)",
        "lower candidates.halving.block or raise the limit",
    ),
    Case(
        "sweep-halving-budget-below-block",
        "sweep cfg.yaml (halving: {block: 4, budget: 3})",
        lambda e: _sweep(e, HALVING % "{block: 4, budget: 3}"),
        "ConfigError",
        "budget 3 is smaller than one block",
        "raise the budget or lower the block",
    ),
    Case(
        "sweep-halving-budget-below-first-round",
        "sweep cfg.yaml (3 candidates, halving: {block: 4, budget: 8})",
        lambda e: _sweep(e, HALVING % "{block: 4, budget: 8}"),
        "ConfigError",
        "cannot pay for the first round",
        "raise the budget, lower the block",
    ),
]
