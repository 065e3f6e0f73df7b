"""The demo's config (:class:`DemoConfig`) and the sweep it runs (:func:`sweep_config`).

The budgets of the experts and of the sweep are the demo's own fields; everything else the sweep
can be told sits under ``sweep:`` (every :class:`~layerswap.sweep.config.SweepConfig` field but the
models the demo makes: ``sweep.cache_dtype``, ``sweep.device``, ``sweep.candidates.halving.block``
...), laid over the checked-in ``sweep.yaml`` beside this module. The whole sweep config is built
and checked by ``SweepConfig`` when the demo config is validated, before anything is created.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model, field_serializer, field_validator, model_validator

from layerswap.config import StrictModel, field_doc, merge_nested, read_yaml, validate_config
from layerswap.errors import ConfigError
from layerswap.sweep.config import SweepConfig, validate_sweep_dict

#: The experts' budgets (chosen in docs/finetune.md "The demo's experts": both measurably learn
#: within the demo's time on 2 CPU cores).
STEPS = 12
SEQ_LEN = 128
MATH_SEQ_LEN = 256
LR = 5e-5
CHECK_EXAMPLES = 24
#: The demo's sweep settings (tasks, target, search), checked in beside this module.
SWEEP_YAML = Path(__file__).with_name("sweep.yaml")
#: Fields of the sweep the demo fills with its own outputs (its base and experts).
_MADE_BY_THE_DEMO = ("base", "math", "lang")
#: Stages whose ``boundaries.yaml`` can seed the sweep's candidates.
CANDIDATE_SOURCES = ("analysis", "importance")
#: Lenses of ``layerswap analyze --lens`` the demo can run (one shared "lenses" stage) to seed them too.
LENS_SOURCES = ("cka", "logit", "lape", "grad")


def _described(model: type[StrictModel], name: str) -> Any:
    """A copy of a field, its meaning (``#:`` comment) kept as its description for the command's help."""
    info = copy.copy(model.model_fields[name])
    info.description = field_doc(model, name) or None
    return info


DemoSweep = create_model(  # every SweepConfig field but the models, each "not given" unless set
    "DemoSweep",
    __base__=StrictModel,
    __doc__="Sweep settings laid over the demo's (keys of a sweep YAML without base, math and lang).",
    **{
        name: (info.annotation, _described(SweepConfig, name))
        for name, info in SweepConfig.model_fields.items()
        if name not in _MADE_BY_THE_DEMO
    },
)


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
    seeds: int = Field(
        1,
        ge=1,
        description="Train each expert N times (seeds 0..N-1) and sweep each seed's experts; the report adds intervals "
        "over seeds and examples (default 1, the demo's budget: intervals over examples only; docs/sweep.md).",
    )
    check_examples: int = Field(
        CHECK_EXAMPLES,
        ge=2,
        description=f"Examples of each expert's check against the base (GSM8K test beyond MGSM's 250; FLORES) (default {CHECK_EXAMPLES}).",
    )
    importance_examples: int = Field(16, ge=1, description="Examples per task for the base's diagonal Fisher.")
    lens_examples: int = Field(
        16,
        ge=2,
        description="Examples per task (GSM8K train, NTREX) for the lenses named in candidate_source (cka, logit, lape, grad).",
    )
    limit: int = Field(
        12, ge=1, description="Examples per evaluation task in the sweep (the finals; halving blocks are half of it)."
    )
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
    candidate_source: list[str] = Field(
        default_factory=lambda: list(CANDIDATE_SOURCES),
        description="Whose recommended swaps the sweep evaluates, top_n of each (one candidate per geometry): analysis (the experts' deltas), importance (the base's Fisher), and any of the lenses cka, logit, lape, grad (run in one 'lenses' stage, docs/analysis.md) (repeat the flag).",
    )
    figures: str | None = Field(None, description="Also copy the headline figures into this folder (the repo's figures/).")
    base_params_b: float | None = Field(
        None,
        description="The base's parameters in billions, for --dry-run's estimates when the base is not at hand (else read from it).",
    )
    sweep: DemoSweep = Field(  # type: ignore[valid-type]
        default_factory=DemoSweep,
        description="Any other sweep setting (keys of a sweep YAML), laid over layerswap/pipeline/sweep.yaml and the demo's budgets.",
    )

    @field_serializer("sweep")
    def _only_given(self, sweep: Any) -> dict[str, Any]:
        """Only the sweep keys that were set: written back as a config (``demo.yaml``), the defaults
        of SweepConfig must not pass for choices and win over the demo's budgets."""
        return sweep.model_dump(mode="json", exclude_unset=True)

    @field_validator("candidate_source", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """One source (the form of earlier configs) or several: a stage that writes ``boundaries.yaml`` or a lens."""
        value = [value] if isinstance(value, str) else value
        known = CANDIDATE_SOURCES + LENS_SOURCES
        bad = [v for v in value or [] if v not in known] if isinstance(value, list) else []
        if bad or not value or len(set(value)) != len(value):
            raise ConfigError(f"candidate_source {value!r}: name each of {', '.join(known)} at most once, at least one")
        return value

    def lenses(self) -> list[str]:
        """The lenses the demo's "lenses" stage runs (those named in ``candidate_source``), in that order."""
        return [s for s in self.candidate_source if s in LENS_SOURCES]

    def boundary_sources(self, out: Path) -> list[str]:
        """What the sweep's ``candidates.boundaries`` reads in ``out``: each stage's ``boundaries.yaml``
        in the order named, then the lenses stage's folder (one source per lens, skipped ones with why)."""
        stages = [str(out / s / "boundaries.yaml") for s in self.candidate_source if s in CANDIDATE_SOURCES]
        return stages + ([str(out / "lenses")] if self.lenses() else [])

    @model_validator(mode="after")
    def _sweep_is_valid(self) -> DemoConfig:
        """The sweep this config runs, checked by SweepConfig now (not hours later at the sweep stage)."""
        try:
            sweep_config(self, base=self.base, math="math-expert", lang="lang-expert", boundaries=None, data_dir=self.data_dir)
        except ConfigError as exc:  # say where the sweep's keys come from: its max_examples is --screen-examples
            raise ConfigError(f"the demo's sweep (sweep.yaml, the demo's budgets, then sweep.*): {exc}") from None
        return self

    @classmethod
    def quick_config(cls, **overrides: Any) -> DemoConfig:
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


def sweep_config(
    config: DemoConfig, *, base: str, math: str, lang: str, boundaries: list[str] | None, data_dir: str | None
) -> SweepConfig:
    """The demo's sweep: ``sweep.yaml``, then the demo's models and budgets, then ``config.sweep``'s keys."""
    halving = {"block": max(1, config.limit // 2), "max_examples": config.screen_examples or 2 * config.limit}
    own = {
        "base": base,
        "math": math,
        "lang": lang,
        "languages": [config.language],
        "limit": config.limit,
        "data_dir": data_dir,
        "finalists": config.finalists,
        "final_baselines": config.final_baselines,
        "candidates": {"boundaries": boundaries, "top_n": config.top_n, "baselines": config.baselines, "halving": halving},
    }
    values = merge_nested(merge_nested(read_yaml(SWEEP_YAML), own), config.sweep.model_dump(exclude_unset=True))
    return validate_sweep_dict(values)
