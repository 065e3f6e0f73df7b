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


# Offsets (in points) tried in turn for a point's label: beside it first, then further out.
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3, 4) for dx, dy in ((4, 4), (4, -10), (-4, 4), (-4, -10), (0, 9), (0, -15))]


def label_points(ax: Any, xs: list[float], ys: list[float], labels: list[str], *, fontsize: int = 7) -> None:
    """Name each point of a scatter without two names overlapping (greedy, in display space).

    Call it once the axes are final (after ``tight_layout`` and tick locators). Each label takes the
    first offset from its point whose box overlaps no point and no label placed before it and stays
    inside the axes; points at one position share one label listing their names; a thin leader line ties each
    label to its point (neighbours' labels can sit closer to another point than to their own). Deterministic: the same data, the same figure.
    """
    merged: dict[tuple[float, float], list[str]] = {}
    for x, y, name in zip(xs, ys, labels, strict=True):
        merged.setdefault((float(x), float(y)), []).append(str(name))
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    radius = 4 * ax.figure.dpi / 72  # a default marker's half-width: no label covers a point
    centres = ax.transData.transform([(float(x), float(y)) for x, y in merged])
    placed: list[Any] = [Bbox.from_extents(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]

    def annotate(text: str, xy: tuple[float, float], offset: tuple[float, float], leader: bool = False) -> Any:
        return ax.annotate(text, xy, xytext=offset, textcoords="offset points", fontsize=fontsize, alpha=0.85,
                           ha="left" if offset[0] >= 0 else "right",
                           arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3} if leader else None)

    for xy, names in sorted(merged.items()):
        text = ", ".join(names)
        chosen, box = 0, None
        for i, offset in enumerate(_LABEL_OFFSETS):
            probe = annotate(text, xy, offset)
            extent = probe.get_window_extent(renderer)
            probe.remove()
            inside = axes_box.x0 <= extent.x0 and extent.x1 <= axes_box.x1 and axes_box.y0 <= extent.y0 and extent.y1 <= axes_box.y1
            if inside and not any(extent.overlaps(other) for other in placed):
                chosen, box = i, extent
                break
        final = annotate(text, xy, _LABEL_OFFSETS[chosen], leader=True)  # crowded everywhere: the first offset
        if box is None:
            final.update_positions(renderer)
            box = Text.get_window_extent(final, renderer)  # the text, not its leader line
        placed.append(box)
