"""The sweep's schemas: what to merge and evaluate (:class:`SweepConfig`) and one candidate.

Baselines and tasks are checked against the registries (``layerswap.merge.methods`` and
``layerswap.evaluate.tasks``) when a config is loaded, so a typo fails before minutes of loading.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from layerswap.config import StrictModel, load_config, validate_config
from layerswap.errors import ConfigError
from layerswap.evaluate.tasks import TASKS
from layerswap.merge.methods import BASELINE_NAMES


class GridSpec(StrictModel):
    """An explicit grid of layer swaps: every combination of the three lists."""

    bottom: list[int] = Field(default_factory=lambda: [2, 3, 4])
    top: list[int] = Field(default_factory=lambda: [1, 2])
    transition: list[int] = Field(default_factory=lambda: [0])


class CandidatesSpec(StrictModel):
    """Where candidates come from: an analysis ``boundaries.yaml``, a grid, and baselines."""

    boundaries: str | None = None
    top_n: int = Field(8, ge=1)
    grid: GridSpec | None = None
    baselines: list[str] = Field(default_factory=lambda: ["base", "math", "lang", "linear", "ties", "revert"])
    ties_density: float = Field(0.2, gt=0, le=1)
    dare_density: float = Field(0.5, gt=0, le=1)
    seed: int = 0


class SweepConfig(StrictModel):
    """A sweep: the models, the tasks and languages, the candidates, what to keep."""

    base: str
    math: str
    lang: str
    languages: list[str] = Field(default_factory=lambda: ["sw"])
    tasks: list[str] = Field(default_factory=lambda: ["proxy"])
    select: str | None = None
    #: Examples per task and language. 168 paired examples is the smallest n at which McNemar's exact
    #: test finds a 10-point accuracy difference between two candidates with 80% power at a typical
    #: discordance of 0.2 (docs/evaluate.md); fewer cannot confirm even that. The proxy and FLORES
    #: cost one forward pass per example.
    limit: int | None = Field(168, ge=1)
    shots: int = Field(2, ge=0, le=8)
    format: Literal["native_cot", "direct"] = "native_cot"
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    data_dir: str | None = None
    candidates: CandidatesSpec = Field(default_factory=CandidatesSpec)
    non_layer: str | None = None
    dtype: str | None = None
    device: str | None = None
    #: The expert tensors held for the whole sweep (in CPU memory): float32 keeps blends exact;
    #: ``model`` holds them in the model's dtype (bf16 halves the memory for 7-8B experts).
    cache_dtype: Literal["float32", "model"] = "float32"
    save_best: bool = False


class Candidate(StrictModel):
    """One merged model to evaluate: a method, its parameters, and the analysis score if any."""

    name: str
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    bottom: int | None = None
    top: int | None = None
    transition: int | None = None
    analysis_score: float | None = None
    source: str = "grid"

    def fingerprint(self) -> str:
        """What the stored result of this candidate depends on (its name does not count)."""
        text = json.dumps({"method": self.method, "params": self.params}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """A sweep YAML (with CLI overrides), checked against the registries."""
    config = load_config(SweepConfig, path, overrides)
    check_config(config)
    return config


def validate_sweep_dict(data: dict[str, Any]) -> SweepConfig:
    """A sweep config from a dict (notebooks, benchmarks), checked as a YAML file would be."""
    config = validate_config(SweepConfig, data, source="sweep config")
    check_config(config)
    return config


def check_config(config: SweepConfig) -> None:
    """Baselines and tasks known, languages parseable, ``select`` among the tasks."""
    unknown = [b for b in config.candidates.baselines if b not in BASELINE_NAMES]
    if unknown:
        raise ConfigError(f"unknown baseline {unknown[0]!r}: valid baselines are {', '.join(BASELINE_NAMES)}")
    valid = [name for name, spec in TASKS.items() if spec.in_sweep]
    unknown_tasks = [t for t in config.tasks if t not in valid]
    if unknown_tasks or not config.tasks:
        raise ConfigError(f"unknown sweep task {unknown_tasks[0] if unknown_tasks else '(none)'!r}: valid tasks are {', '.join(valid)}")
    from layerswap.io import parse_languages

    parse_languages(config.languages)
    if config.select is not None and config.select not in config.tasks:
        raise ConfigError(f"select {config.select!r} is not among the tasks ({', '.join(config.tasks)}): pick one of them")
