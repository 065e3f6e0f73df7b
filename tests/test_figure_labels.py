"""Point labels of the scatters (screen vs target, score vs metric) never overlap each other."""

from __future__ import annotations

import itertools

from layerswap.figures import label_points, pyplot


def _label_boxes(ax):
    """Each label's text box (an annotation's own extent would include its leader line)."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    boxes = []
    for t in ax.texts:
        t.update_positions(renderer)
        boxes.append((t.get_text(), Text.get_window_extent(t, renderer)))
    return boxes


def test_close_points_get_labels_that_do_not_overlap_and_stay_inside_the_axes():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    # the demo's screen-vs-target case: three swaps within a hair of each other, two baselines apart
    xs = [-16.03, -16.02, -15.95, -14.48, -14.40]
    ys = [0.0, 0.0, 0.0, 0.0, 0.0]
    names = ["b3-u1", "lang", "math", "base", "ties-d0.2"]
    ax.plot(xs, ys, "o")
    fig.tight_layout()
    label_points(ax, xs, ys, names)
    boxes = _label_boxes(ax)
    assert sorted(text for text, _ in boxes) == sorted(names)
    axes_box = ax.get_window_extent(fig.canvas.get_renderer())
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"labels {a!r} and {b!r} overlap"
    for text, box in boxes:
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, f"label {text!r} leaves the axes"
    plt.close(fig)


def test_points_at_one_position_share_one_label():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 1, 2], [1, 1, 2], "o")
    label_points(ax, [1, 1, 2], [1, 1, 2], ["a", "b", "c"])
    assert sorted(text for text, _ in _label_boxes(ax)) == ["a, b", "c"]
    plt.close(fig)
