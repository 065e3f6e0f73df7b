"""The sweep's schemas: what to merge and evaluate (:class:`SweepConfig`) and one candidate.

Baselines and tasks are checked against the registries (``layerswap.merge.methods`` and
``layerswap.evaluate.tasks``) when a config is loaded, so a typo fails before minutes of loading.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from layerswap.config import StrictModel, load_config, validate_config
from layerswap.errors import ConfigError
from layerswap.evaluate.tasks import TASKS, get_task
from layerswap.merge.methods import BASELINE_NAMES
from layerswap.sweep.resume import CHANGES_RESULTS


def changes(results: bool, *args: Any, **kwargs: Any) -> Any:
    """A :class:`SweepConfig` field that says whether it changes a stored result (the resume key reads it)."""
    return Field(*args, json_schema_extra={CHANGES_RESULTS: results}, **kwargs)


class GridSpec(StrictModel):
    """An explicit grid of layer swaps: every combination of the three lists."""

    bottom: list[int] = Field(default_factory=lambda: [2, 3, 4])
    top: list[int] = Field(default_factory=lambda: [1, 2])
    transition: list[int] = Field(default_factory=lambda: [0])


#: How the candidates are searched: every candidate on every example, or successive halving.
SEARCH_MODES = ("exhaustive", "halving")


class HalvingSpec(StrictModel):
    """Successive halving over the screen task's examples (:mod:`layerswap.sweep.halving`).

    Every surviving candidate is evaluated on the next ``block`` examples (per language, in the
    data's fixed order), then each survivor whose paired upper confidence bound against the round's
    leader lies below zero is dropped. ``max_examples`` caps a candidate's examples per language
    (default: ``limit``); ``budget`` caps the screen's example-evaluations in all (candidates x
    examples x languages); ``alpha`` is the family-wise error of eliminating the best candidate,
    split evenly over the rounds and Holm-corrected within each round.
    """

    block: int = Field(24, ge=1)
    max_examples: int | None = Field(None, ge=1)
    budget: int | None = Field(None, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)


class CandidatesSpec(StrictModel):
    """Where candidates come from: the lenses' ``boundaries.yaml``, a grid, and baselines; how they are searched."""

    #: Analyses whose recommended swaps are evaluated, each a ``boundaries.yaml``, a folder holding one
    #: (``layerswap analyze``, ``layerswap importance``) or a ``layerswap analyze --lens`` folder (every
    #: lens in it); one path or a list. Each lens proposes its first ``top_n`` swaps; a geometry several
    #: lenses propose is evaluated once and names them all.
    boundaries: list[str] = Field(default_factory=list)
    top_n: int = Field(8, ge=1)
    grid: GridSpec | None = None
    baselines: list[str] = Field(default_factory=lambda: ["base", "math", "lang", "linear", "ties", "revert"])
    ties_density: float = Field(0.2, gt=0, le=1)
    dare_density: float = Field(0.5, gt=0, le=1)
    #: Each expert's data spec for the data-aware baselines (``fisher``, ``regmean``), e.g. ``{math: gsm8k, lang: "ntrex:sw"}``.
    baseline_data: dict[str, str] = Field(default_factory=dict)
    seed: int = 0
    #: ``exhaustive``: every candidate on every task and example; ``halving``: successive halving on the screen task.
    search: str = "exhaustive"
    halving: HalvingSpec = Field(default_factory=HalvingSpec)

    @field_validator("boundaries", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        """One path (the form of earlier configs) or none, as a list."""
        return [] if value is None else [str(value)] if isinstance(value, (str, Path)) else value


class SweepConfig(StrictModel):
    """A sweep: the models, the tasks and languages, the candidates, what to keep.

    Every field says whether it changes a stored result (:func:`changes`): the resume key
    (:mod:`~layerswap.sweep.resume`) is made of those fields and the inputs' contents. The candidates
    do not count there: each stored result is keyed by its own candidate's merge as well.
    """

    base: str = changes(True)
    math: str = changes(True)
    lang: str = changes(True)
    languages: list[str] = changes(True, default_factory=lambda: ["sw"])
    tasks: list[str] = changes(True, default_factory=lambda: ["proxy"])
    select: str | None = changes(False, None)
    #: Examples per task and language. 168 paired examples is the smallest n at which McNemar's exact
    #: test finds a 10-point accuracy difference between two candidates with 80% power at a typical
    #: discordance of 0.2 (docs/evaluate.md); fewer cannot confirm even that. The proxy and FLORES
    #: cost one forward pass per example.
    limit: int | None = changes(True, 168, ge=1)
    shots: int = changes(True, 2, ge=0, le=8)
    format: Literal["native_cot", "direct"] = changes(True, "native_cot")
    batch_size: int = changes(False, 8, ge=1)
    max_new_tokens: int = changes(True, 128, ge=1)
    data_dir: str | None = changes(True, None)
    candidates: CandidatesSpec = changes(False, default_factory=CandidatesSpec)
    non_layer: str | None = changes(True, None)
    dtype: str | None = changes(True, None)
    device: str | None = changes(False, None)
    #: The precision merges read the sources in (they stay in their files; nothing is held): float32 keeps
    #: blends exact; ``model`` rounds float32 checkpoints to the model's dtype first, which changes
    #: blended weights, so stored results made with the other setting are not reused.
    cache_dtype: Literal["float32", "model"] = changes(True, "float32")
    save_best: bool = changes(False, False)
    #: The cheap task halving runs on (default: ``select``, else the first task).
    screen: str | None = changes(False, None)
    #: The task that decides: evaluated on the finalists, the experts and the best baseline after halving.
    target: str | None = changes(False, None)
    #: How many of the last survivors of halving are evaluated on the target (and the other tasks).
    finalists: int = changes(False, 3)
    #: Baselines (names from ``candidates.baselines``, e.g. ``linear``, ``ties``) the target always sees after
    #: halving, besides the finalists, the experts and the best baseline: the references a report must beat.
    final_baselines: list[str] = changes(False, default_factory=list)

    def screen_task(self) -> str:
        """The task halving runs on: ``screen``, else ``select``, else the first task."""
        return self.screen or self.select or self.tasks[0]

    def decision_task(self) -> str:
        """The task the leader is selected on: ``select``, else the target, else the screen."""
        return self.select or self.target or self.screen_task()

    def screen_examples(self) -> int | None:
        """Examples per language halving may spend on one candidate: ``max_examples``, else ``limit``."""
        return self.candidates.halving.max_examples or self.limit


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
    #: The lenses that proposed this swap (``candidates.boundaries``), in the order of the sources.
    lenses: list[str] = Field(default_factory=list)

    def fingerprint(self) -> str:
        """What the stored result of this candidate depends on (its name does not count)."""
        text = json.dumps({"method": self.method, "params": self.params}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """A sweep YAML with CLI overrides (nested ones, ``{"candidates": {"search": "halving"}}``, merge key
    by key), checked against the registries."""
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
    unknown_tasks = [t for t in config.tasks if t not in valid and not t.startswith("lm_eval:")]
    if unknown_tasks or not config.tasks:
        raise ConfigError(f"unknown sweep task {unknown_tasks[0] if unknown_tasks else '(none)'!r}: valid tasks are {', '.join(valid)}")
    for task in config.tasks:
        get_task(task)  # an lm_eval: task is checked here (lm-eval installed, task known, data reachable, per-example metric)
    from layerswap.io import parse_languages
    from layerswap.io.languages import refuse_repeated

    parse_languages(config.languages)
    refuse_repeated(config.tasks, "tasks")
    if config.select is not None and config.select not in config.tasks:
        raise ConfigError(f"select {config.select!r} is not among the tasks ({', '.join(config.tasks)}): pick one of them")
    check_search(config)


def check_search(config: SweepConfig) -> None:
    """The search mode, the screen and target tasks, the finalists and the halving budgets."""
    spec = config.candidates
    if spec.search not in SEARCH_MODES:
        raise ConfigError(f"unknown search mode {spec.search!r}: valid modes are {', '.join(SEARCH_MODES)}")
    for key in ("screen", "target"):
        task = getattr(config, key)
        if task is not None and task not in config.tasks:
            raise ConfigError(f"{key} task {task!r} is not among the sweep's tasks ({', '.join(config.tasks)}): add it to tasks or pick one of them")
    if isinstance(config.finalists, bool) or config.finalists < 1:
        raise ConfigError(f"finalists {config.finalists!r} must be at least 1: the target needs a candidate to evaluate")
    absent = [b for b in config.final_baselines if b not in spec.baselines]
    if absent:
        raise ConfigError(
            f"final_baselines names {absent[0]!r}, which is not among candidates.baselines ({', '.join(spec.baselines)}): add it there or drop it"
        )
    if spec.search != "halving":
        return
    halving = spec.halving
    most = config.screen_examples()
    if most is None:
        raise ConfigError("halving needs a bound on the examples: set limit or candidates.halving.max_examples")
    if most < halving.block:
        raise ConfigError(
            f"candidates.halving.max_examples {most} (else limit) is smaller than one block ({halving.block} examples): "
            "lower candidates.halving.block or raise the limit"
        )
    one_block = halving.block * len(config.languages)
    if halving.budget is not None and halving.budget < one_block:
        raise ConfigError(
            f"candidates.halving.budget {halving.budget} is smaller than one block ({halving.block} examples x "
            f"{len(config.languages)} language(s) = {one_block}): raise the budget or lower the block"
        )
