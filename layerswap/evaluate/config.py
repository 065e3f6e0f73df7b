"""The settings of ``layerswap evaluate`` as a config (:class:`EvaluateConfig`): its options are
generated from these fields, and a YAML file with the same keys works as ``--config``.

No constraints here: :func:`~layerswap.evaluate.api.evaluate` checks every value (the library is
where input checks live, for the CLI and for callers alike). Light: the registry is read for the
help text, nothing imports torch.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from layerswap.config import StrictModel
from layerswap.evaluate.tasks import TASKS

TASK_HELP = "Comma-separated tasks. " + "; ".join(f"{t.name}: {t.summary}" for t in TASKS.values()) + "."
SHOTS_HELP = (
    "Few-shot exemplars, MGSM 0..8 (default: "
    + ", ".join(f"{t.name} {t.default_shots}" for t in TASKS.values() if t.default_shots is not None)
    + ")."
)
DATA_DIR_HELP = (
    "Folder laid out like ../shared/data (mgsm/, gsm8k/, flores200/, ...). Default: $LAYERSWAP_DATA_DIR, "
    "else shared/data in the current folder or its parent (../shared/data) when it holds mgsm/, else the Hugging Face Hub."
)


class EvaluateConfig(StrictModel):
    """What to evaluate a model on, and how."""

    task: str = Field("mgsm", description=TASK_HELP)
    langs: str = Field(
        "sw,bn,te",
        description="Comma-separated language codes (bn de en es fr ja ru sw te th zh).",
        json_schema_extra={"cli_alias": "--lang"},
    )
    format: str = Field("native_cot", description="MGSM prompt format: direct or native_cot (lm-eval's).")
    shots: int | None = Field(None, description=SHOTS_HELP)
    limit: int | None = Field(None, description="Evaluate only the first N examples per language.")
    batch_size: int = Field(8, description="Sequences per forward pass.")
    max_new_tokens: int = Field(256, description="Greedy generation budget per answer.")
    data_dir: Path | None = Field(None, description=DATA_DIR_HELP)
    data: Path | None = Field(
        None,
        description="--task custom: a JSONL file, or a TSV with a header; --task mgsm: an MGSM variant (question, answer_number, language).",
    )
    question_field: str = Field("question", description="--task custom: the question field.")
    answer_field: str = Field(
        "answer", description="--task custom: the gold answer field (a number, or a worked answer ending '#### N')."
    )
    base: str | None = Field(None, description="Base model of a LoRA adapter (default: the one the adapter names).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps.")
    dtype: str = Field(
        "auto", description="auto (float32 on CPU, the checkpoint's 16-bit dtype on GPU), float32, bfloat16, float16."
    )
