"""``layerswap evaluate``: any task of the registry (MGSM, GSM8K, FLORES, ...), thin over the library."""

from __future__ import annotations

from pathlib import Path

import typer

from layerswap.cli import app
from layerswap.evaluate.tasks import TASKS  # light: specs only, no torch

TASK_HELP = "Comma-separated tasks. " + "; ".join(f"{t.name}: {t.summary}" for t in TASKS.values()) + "."
SHOTS_HELP = "Few-shot exemplars, MGSM 0..8 (default: " + ", ".join(
    f"{t.name} {t.default_shots}" for t in TASKS.values() if t.default_shots is not None
) + ")."


@app.command("evaluate")
def evaluate_cmd(
    model: str = typer.Argument(..., help="Model folder, PEFT adapter folder (on its base), or short name (gemma3-270m)."),
    task: str = typer.Option("mgsm", "--task", help=TASK_HELP),
    langs: str = typer.Option("sw,bn,te", "--langs", "--lang", help="Comma-separated language codes (bn de en es fr ja ru sw te th zh)."),
    fmt: str = typer.Option("native_cot", "--format", help="MGSM prompt format: direct or native_cot (lm-eval's)."),
    shots: int | None = typer.Option(None, "--shots", help=SHOTS_HELP),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N examples per language."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Greedy generation budget per answer."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder laid out like shared/data (else $LAYERSWAP_DATA_DIR, else the Hub)."),
    data: Path | None = typer.Option(None, "--data", help="--task custom: a JSONL file, or a TSV with a header; --task mgsm: an MGSM variant (question, answer_number, language)."),
    question_field: str = typer.Option("question", "--question-field", help="--task custom: the question field."),
    answer_field: str = typer.Option("answer", "--answer-field", help="--task custom: the gold answer field (a number, or a worked answer ending '#### N')."),
    base: str | None = typer.Option(None, "--base", help="Base model of a LoRA adapter (default: the one the adapter names)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, the checkpoint's 16-bit dtype on GPU), float32, bfloat16, float16."),
    out: Path = typer.Option(..., "--out", help="Output folder: examples.jsonl, summary.csv, layerswap.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Evaluate a model; print the summary table and write per-example records."""
    from layerswap.evaluate.api import evaluate
    from layerswap.evaluate.result import format_summary

    result = evaluate(
        model,
        task,
        langs,
        fmt=fmt,
        shots=shots,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        data_dir=data_dir,
        data=data,
        question_field=question_field,
        answer_field=answer_field,
        out=out,
        overwrite=overwrite,
        device=device,
        dtype=dtype,
        base=base,
    )
    print(format_summary(result.summary))
    print(f"wrote {out}/examples.jsonl and {out}/summary.csv")
