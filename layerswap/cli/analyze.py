"""``layerswap analyze`` and ``layerswap importance``: thin wrappers over :mod:`layerswap.analysis`.

Their options are generated from :class:`~layerswap.analysis.options.AnalyzeConfig` and
:class:`~layerswap.analysis.options.ImportanceConfig` (:mod:`layerswap.cli.options`); the library
functions check the values.
"""

from __future__ import annotations

import typer

from layerswap.analysis.options import AnalyzeConfig, ImportanceConfig
from layerswap.cli import app
from layerswap.cli.options import command_from_config

EXAMPLE = "layerswap analyze --base gemma3-270m --expert math=experts/math --expert lang=experts/lang --out analysis"


def _report(result) -> None:  # noqa: ANN001
    bd = result.boundaries
    print(f"wrote {result.out}")
    for row in result.total_overlap().itertuples():
        print(
            f"  top-{row.k_percent:g}% {row.expert_a}/{row.expert_b}: Jaccard {row.jaccard:.4f} vs {row.expected_jaccard:.4f} independent"
        )
    if bd is not None:
        print(
            f"  boundaries ({bd['separation']} separation): bottom={bd['bottom']} top={bd['top']} transition={bd['transition']}: {bd['reason']}"
        )


@app.command("analyze")
@command_from_config(AnalyzeConfig, example=EXAMPLE)
def analyze_command(
    config: AnalyzeConfig,
    out: str = typer.Option(..., "--out", help="Output folder (tables, boundaries.yaml, figures, summary.md)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Per-layer delta magnitudes, exact top-k% overlap, cosines and recommended swap boundaries; with --lens, any lenses."""
    if config.lens is not None:
        _run_lenses(config, out, overwrite)
        return
    if config.data:
        from layerswap.errors import ConfigError

        raise ConfigError("--data is read by the lenses: add --lens (e.g. --lens deltas,cka,grad), or use layerswap importance")
    from layerswap.analysis import analyze

    result = analyze(
        config.base,
        config.expert,
        top_k=config.top_k,
        out=out,
        overwrite=overwrite,
        lang_expert=config.lang_expert,
        math_expert=config.math_expert,
        plots=config.plots,
    )
    _report(result)


def _run_lenses(config: AnalyzeConfig, out: str, overwrite: bool) -> None:
    from layerswap.config import check_device

    check_device(config.device)
    from layerswap.analysis.lenses import run_lenses

    result = run_lenses(
        config.base,
        config.expert,
        config.lens,
        data=config.data,
        out=out,
        overwrite=overwrite,
        data_dir=config.data_dir,
        examples=config.examples,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        device=config.device,
        top_k=config.top_k,
        lang_expert=config.lang_expert,
        math_expert=config.math_expert,
        target_lang=config.target_lang,
        plots=config.plots,
    )
    print(f"wrote {result.out}")
    for row in result.table().itertuples():
        where = "" if row.separation == "skipped" else f"bottom={row.bottom} top={row.top} transition={row.transition}: "
        print(f"  {row.lens} ({row.separation}): {where}{row.reason}")


@app.command("importance")
@command_from_config(
    ImportanceConfig, example="layerswap importance --base gemma3-270m --data math=gsm8k --data lang=ntrex:sw --out importance"
)
def importance_command(
    config: ImportanceConfig,
    out: str = typer.Option(..., "--out", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Diagonal Fisher of the base on each task's data, reported like the deltas: where each task needs the model."""
    from layerswap.analysis.importance import importance

    settings = config.model_dump(exclude={"base", "data"})
    _report(importance(config.base, config.data, out=out, overwrite=overwrite, **settings))
