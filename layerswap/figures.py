"""Matplotlib plumbing shared by every wing: a headless-safe pyplot, and PNG + SVG saving.

Scripts and the CLI draw off screen (Agg); inside IPython/Jupyter the notebook's backend is kept
so that figures show inline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _interactive() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def pyplot() -> Any:
    """``matplotlib.pyplot``, switched to Agg first unless a file backend or a notebook is active."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "svg", "pdf") and not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` and close the figure; return both paths.

    Each file is rendered in memory and written by :func:`layerswap.files.replace_file`: a full disk
    leaves the previous figure, and a link planted at the name is replaced, never written through.
    """
    import io

    from layerswap.files import replace_file

    paths = []
    try:
        for ext in ("png", "svg"):
            path = Path(stem).with_suffix(f".{ext}")
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=130 if ext == "png" else None, bbox_inches="tight")
            paths.append(replace_file(path, buffer.getvalue()))
    finally:
        pyplot().close(fig)
    return paths
