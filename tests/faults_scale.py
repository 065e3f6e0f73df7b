"""Scale-out mistakes (issue 19): a ``--report-to`` integration that is not installed, or not one of ours.

Both are refused with one line before anything is written (the Trainer itself would fail only after
the work folder exists, with a traceback). Launch mistakes that need environment variables
(``accelerate launch --cpu`` starting one process, an FSDP config without a GPU, ``--merge-lora``
under FSDP/DeepSpeed) are tested in ``tests/test_finetune_distributed.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
from faults_catalogue import Case, Env

GOOD_JSONL = "no-field.jsonl"  # a readable JSONL from the base catalogue (finetune checks its options first)


def build(env: Env) -> None:
    """Nothing to build: the base catalogue's inputs serve."""


def _finetune(env: Env, *extra: str) -> list[str]:
    return ["finetune", "--base", str(env.base), "--data", str(env.p(GOOD_JSONL)), "--steps", "1", "--out", env.out, *extra]


def _without(package: str):  # noqa: ANN202
    """A case setup that runs only where ``package`` is not installed (it is no dependency of layerswap)."""

    def setup(env: Env) -> None:
        if importlib.util.find_spec(package) is not None:
            pytest.skip(f"{package} is installed here: --report-to {package} would run")

    return setup


CASES: list[Case] = [
    Case("finetune-report-to-not-installed", "finetune --report-to wandb (wandb not installed)", lambda e: _finetune(e, "--report-to", "wandb"), "ConfigError", "needs the wandb package", "pip install wandb, or use --report-to none", setup=_without("wandb")),
    Case("finetune-report-to-unknown", "finetune --report-to mlflow", lambda e: _finetune(e, "--report-to", "mlflow"), "ConfigError", "--report-to 'mlflow'", "use none, tensorboard or wandb"),
]
