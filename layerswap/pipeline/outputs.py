"""Where the demo writes: its folder (refused before anything is created when it would harm an input)
and the headline figures it publishes into the repository's ``figures/``."""

from __future__ import annotations

from pathlib import Path

from layerswap.io import write_bytes_atomic
from layerswap.pipeline.config import DemoConfig

#: The file a demo folder holds from its start (a rerun resumes only in such a folder).
DEMO_MARKER = "demo.yaml"
#: The folders the demo's stages write inside its output folder.
STAGE_FOLDERS = ("experts", "checks", "analysis", "importance", "sweep")
#: Figures copied from a demo run into the repository's ``figures/`` (name in run -> published name).
PUBLISHED = {
    "analysis/figures/shares.png": "demo_deltas_shares.png",
    "analysis/figures/heatmap_math.png": "demo_deltas_heatmap_math.png",
    "analysis/figures/heatmap_lang.png": "demo_deltas_heatmap_lang.png",
    "analysis/figures/overlap_math_lang_top1.png": "demo_overlap_top1.png",
    "importance/figures/shares.png": "demo_importance_shares.png",
    "sweep/figures/best_vs_baselines_proxy-gold_logprob.png": "demo_best_vs_baselines_proxy.png",
    "sweep/figures/swap_heatmap_proxy-gold_logprob.png": "demo_swap_heatmap_proxy.png",
    "sweep/figures/score_vs_metric_proxy-gold_logprob.png": "demo_score_vs_proxy.png",
    "sweep/figures/best_vs_baselines_flores-bits_per_byte.png": "demo_best_vs_baselines_flores.png",
    "sweep/figures/halving_rounds_proxy.png": "demo_halving_rounds.png",
    "sweep/figures/screen_vs_target_proxy_mgsm.png": "demo_screen_vs_target.png",
}


def check_demo_outputs(config: DemoConfig, out: str | Path, data_dir: Path | None) -> Path:
    """Refuse, before anything is created, a demo folder or ``--figures`` folder that would harm an input.

    ``out`` passes :func:`~layerswap.io.outputs.check_output` against the base (a folder, or an
    embedded name's cache folder) and the data folder; it may exist only as an earlier demo's folder
    (its ``demo.yaml``, or a ``layerswap.json`` of kind demo), which a rerun resumes, or empty.
    ``--figures`` may exist (its ``demo_*`` figures are replaced) but must not be, or lie inside, an input.
    """
    from layerswap.errors import InputPathError, OutputExistsError
    from layerswap.io.outputs import check_location, check_not_input, check_output, input_paths, written_by_layerswap

    inputs = [config.base, data_dir]
    previous = written_by_layerswap(out) if Path(out).is_dir() and not Path(out).is_symlink() else None
    marker = None if previous is not None and previous.get("kind") == "demo" else DEMO_MARKER
    path = check_output(out, inputs, may_exist=True, resume_marker=marker)
    for stage in STAGE_FOLDERS:  # a stage folder that is a link would send the stage's writes elsewhere
        if (path / stage).is_symlink():
            raise InputPathError(f"{path / stage} is a symbolic link: remove it or choose another --out")
    if config.figures:
        figures = Path(config.figures).expanduser()
        check_not_input(figures, input_paths(inputs), option="--figures", contains=False)
        if figures.exists() and not figures.is_dir():
            raise OutputExistsError(f"--figures {config.figures} is a file, not a folder: choose another path")
        if not figures.exists():
            check_location(figures, option="--figures")
    return path


def publish_figures(run: Path, dest: Path) -> list[Path]:
    """Copy the demo's headline figures (PNG and SVG) into ``dest`` under stable names."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for src_rel, name in PUBLISHED.items():
        for ext in (".png", ".svg"):
            src = (run / src_rel).with_suffix(ext)
            if src.exists():
                target = (dest / name).with_suffix(ext)
                write_bytes_atomic(target, src.read_bytes())  # a link planted at the name is replaced, never written through
                copied.append(target)
    return copied
