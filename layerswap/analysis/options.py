"""The settings of ``layerswap analyze`` and ``layerswap importance`` as configs: each command's
options are generated from these fields (:mod:`layerswap.cli.options`), and a YAML file with the
same keys works as ``--config``.

No constraints here: :func:`~layerswap.analysis.analyze`, :func:`~layerswap.analysis.importance.importance`
and :func:`~layerswap.analysis.lenses.run_lenses` check every value, for the CLI and for callers alike.
"""

from __future__ import annotations

from pydantic import Field

from layerswap.config import StrictModel

TOP_K_HELP = "Top-k percentages for the overlap, comma-separated, each in (0, 100]."


class AnalyzeConfig(StrictModel):
    """What ``layerswap analyze`` compares: the experts' deltas, or any lenses with ``lens``."""

    base: str = Field(description="Base model folder or embedded name (gemma3-270m).")
    expert: dict[str, str] = Field(
        default_factory=dict, description="NAME=PATH of an expert (model folder or LoRA adapter); repeat."
    )
    top_k: list[float] = Field(default_factory=lambda: [1.0, 5.0], description=TOP_K_HELP)
    lang_expert: str | None = Field(
        None, description="Which expert is the language expert (default: the one named lang or a language code)."
    )
    math_expert: str | None = Field(None, description="Which expert is the math expert (default: the one named math).")
    plots: bool = Field(True, description="Write PNG and SVG figures.")
    lens: str | None = Field(
        None,
        description="Lenses to run, comma-separated: deltas, importance, cka, logit, lape, grad (each writes OUT/<lens>/). Without it: the delta analysis into OUT, as always.",
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        description="With --lens: NAME=SPEC of each task's text (math=gsm8k, lang=ntrex:sw), as for importance; repeat.",
    )
    data_dir: str | None = Field(None, description="With --lens: folder laid out like ../shared/data (FLORES for lape).")
    examples: int = Field(16, description="With --lens: examples per task (the first N).")
    batch_size: int = Field(4, description="With --lens: examples per batch.")
    seq_len: int = Field(64, description="With --lens: tokens per example (longer ones are truncated).")
    target_lang: str | None = Field(
        None, description="With --lens: the target language (default: from the language expert's or data's name)."
    )
    device: str = Field("cpu", description="With --lens: cpu, cuda, cuda:N or auto (several GPUs: accelerate's device_map).")


class ImportanceConfig(StrictModel):
    """What ``layerswap importance`` measures: the base's diagonal Fisher on each task's data."""

    base: str = Field(description="Base model folder or embedded name (gemma3-270m).")
    data: dict[str, str] = Field(
        description="NAME=SPEC of a task's text, as for finetune --data: gsm8k, ntrex:sw, tico:sw, tatoeba:sw, hf:NAME or a JSONL/TSV/text file; repeat."
    )
    examples: int = Field(32, description="Examples per task (the first N).")
    batch_size: int = Field(4, description="Examples per batch.")
    seq_len: int = Field(128, description="Tokens per example (longer ones are truncated).")
    data_dir: str | None = Field(
        None, description="Folder laid out like ../shared/data (default: $LAYERSWAP_DATA_DIR or ../shared/data)."
    )
    top_k: list[float] = Field(
        default_factory=lambda: [1.0, 5.0], description="Top-k percentages, comma-separated, each in (0, 100]."
    )
    lang_task: str | None = Field(
        None, description="Which data set is the language task (default: the one named lang or a language code)."
    )
    math_task: str | None = Field(None, description="Which data set is the math task (default: the one named math).")
    device: str = Field("cpu", description="cpu, cuda or auto.")
    keep_fisher: bool = Field(False, description="Also keep each task's Fisher as OUT/fisher/NAME (model-sized).")
    plots: bool = Field(True, description="Write PNG and SVG figures.")
