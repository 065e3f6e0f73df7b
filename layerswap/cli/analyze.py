"""``layerswap analyze`` and ``layerswap importance``: thin wrappers over :mod:`layerswap.analysis`."""

from __future__ import annotations

import typer

from layerswap.cli import app
from layerswap.cli.common import parse_csv, parse_named


def _report(result) -> None:  # noqa: ANN001
    bd = result.boundaries
    print(f"wrote {result.out}")
    for row in result.total_overlap().itertuples():
        print(f"  top-{row.k_percent:g}% {row.expert_a}/{row.expert_b}: Jaccard {row.jaccard:.4f} vs {row.expected_jaccard:.4f} independent")
    if bd is not None:
        print(f"  boundaries ({bd['separation']} separation): bottom={bd['bottom']} top={bd['top']} transition={bd['transition']}: {bd['reason']}")


@app.command("analyze")
def analyze_command(
    base: str = typer.Option(..., "--base", help="Base model folder or embedded name (gemma3-270m)."),
    expert: list[str] = typer.Option([], "--expert", help="NAME=PATH of an expert (model folder or LoRA adapter); repeat."),
    out: str = typer.Option(..., "--out", help="Output folder (tables, boundaries.yaml, figures, summary.md)."),
    top_k: str = typer.Option("1,5", "--top-k", help="Top-k percentages for the overlap, comma-separated, each in (0, 100]."),
    lang_expert: str | None = typer.Option(None, "--lang-expert", help="Which expert is the language expert (default: the one named lang or a language code)."),
    math_expert: str | None = typer.Option(None, "--math-expert", help="Which expert is the math expert (default: the one named math)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG and SVG figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    lens: str | None = typer.Option(None, "--lens", help="Lenses to run, comma-separated: deltas, importance, cka, logit, lape, grad (each writes OUT/<lens>/). Without it: the delta analysis into OUT, as always."),
    data: list[str] = typer.Option([], "--data", help="With --lens: NAME=SPEC of each task's text (math=gsm8k, lang=ntrex:sw), as for importance; repeat."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="With --lens: folder laid out like ../shared/data (FLORES for lape)."),
    examples: int = typer.Option(16, "--examples", help="With --lens: examples per task (the first N)."),
    batch_size: int = typer.Option(4, "--batch-size", help="With --lens: examples per batch."),
    seq_len: int = typer.Option(64, "--seq-len", help="With --lens: tokens per example (longer ones are truncated)."),
    target_lang: str | None = typer.Option(None, "--target-lang", help="With --lens: the target language (default: from the language expert's or data's name)."),
    device: str = typer.Option("cpu", "--device", help="With --lens: cpu, cuda, cuda:N or auto (several GPUs: accelerate's device_map)."),
) -> None:
    """Per-layer delta magnitudes, exact top-k% overlap, cosines and recommended swap boundaries; with --lens, any lenses."""
    if lens is not None:
        _run_lenses(base, expert, out, lens, data, data_dir, examples, batch_size, seq_len, target_lang, device, top_k, lang_expert, math_expert, plots, overwrite)
        return
    if data:
        from layerswap.errors import ConfigError

        raise ConfigError("--data is read by the lenses: add --lens (e.g. --lens deltas,cka,grad), or use layerswap importance")
    from layerswap.analysis import analyze

    result = analyze(
        base,
        parse_named(expert, option="--expert"),
        top_k=parse_csv(top_k, cast=float),
        out=out,
        overwrite=overwrite,
        lang_expert=lang_expert,
        math_expert=math_expert,
        plots=plots,
    )
    _report(result)


def _run_lenses(base, expert, out, lens, data, data_dir, examples, batch_size, seq_len, target_lang, device, top_k, lang_expert, math_expert, plots, overwrite) -> None:  # noqa: ANN001, PLR0913
    from layerswap.config import check_device

    check_device(device)
    from layerswap.analysis.lenses import run_lenses

    result = run_lenses(
        base,
        parse_named(expert, option="--expert") if expert else {},
        lens,
        data=parse_named(data, option="--data") if data else {},
        out=out,
        overwrite=overwrite,
        data_dir=data_dir,
        examples=examples,
        batch_size=batch_size,
        seq_len=seq_len,
        device=device,
        top_k=parse_csv(top_k, cast=float),
        lang_expert=lang_expert,
        math_expert=math_expert,
        target_lang=target_lang,
        plots=plots,
    )
    print(f"wrote {result.out}")
    for row in result.table().itertuples():
        where = "" if row.separation == "skipped" else f"bottom={row.bottom} top={row.top} transition={row.transition}: "
        print(f"  {row.lens} ({row.separation}): {where}{row.reason}")


@app.command("importance")
def importance_command(
    base: str = typer.Option(..., "--base", help="Base model folder or embedded name (gemma3-270m)."),
    data: list[str] = typer.Option(..., "--data", help="NAME=SPEC of a task's text, as for finetune --data: gsm8k, ntrex:sw, tico:sw, tatoeba:sw, hf:NAME or a JSONL/TSV/text file; repeat."),
    out: str = typer.Option(..., "--out", help="Output folder."),
    examples: int = typer.Option(32, "--examples", help="Examples per task (the first N)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Examples per batch."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per example (longer ones are truncated)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder laid out like ../shared/data (default: $LAYERSWAP_DATA_DIR or ../shared/data)."),
    top_k: str = typer.Option("1,5", "--top-k", help="Top-k percentages, comma-separated, each in (0, 100]."),
    lang_task: str | None = typer.Option(None, "--lang-task", help="Which data set is the language task (default: the one named lang or a language code)."),
    math_task: str | None = typer.Option(None, "--math-task", help="Which data set is the math task (default: the one named math)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    keep_fisher: bool = typer.Option(False, "--keep-fisher", help="Also keep each task's Fisher as OUT/fisher/NAME (model-sized)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG and SVG figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Diagonal Fisher of the base on each task's data, reported like the deltas: where each task needs the model."""
    from layerswap.config import check_device
    from layerswap.errors import ConfigError

    for flag, value in (("--examples", examples), ("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be a whole number of at least 1")
    check_device(device)
    from layerswap.analysis.importance import importance

    result = importance(
        base,
        parse_named(data, option="--data"),
        examples=examples,
        batch_size=batch_size,
        seq_len=seq_len,
        data_dir=data_dir,
        top_k=parse_csv(top_k, cast=float),
        out=out,
        overwrite=overwrite,
        keep_fisher=keep_fisher,
        device=device,
        lang_task=lang_task,
        math_task=math_task,
        plots=plots,
    )
    _report(result)
