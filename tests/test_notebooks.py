"""The notebooks run top to bottom (slow): each is executed in a fresh kernel with small budgets.

``LAYERSWAP_NOTEBOOK_QUICK=1`` shrinks the budgets in each notebook's parameters cell, and
``LAYERSWAP_NOTEBOOK_WORK`` points all four at one temporary work folder, so the first notebook
trains the demo's experts (a few steps) and the others reuse them, as they would for a user.
A failing cell fails the test (nbclient raises ``CellExecutionError`` with the cell's traceback).
"""

from __future__ import annotations

import math
from pathlib import Path

import nbclient  # dev dependencies: a missing one is an error, never a silent skip
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


def _images(book) -> int:
    return sum("image/png" in out.get("data", {}) for cell in book.cells if cell.cell_type == "code" for out in cell.outputs)


def test_all_four_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == [
        "01_explore_deltas.ipynb",
        "02_overlap_heatmaps.ipynb",
        "03_choose_swap_layers.ipynb",
        "04_merge_and_evaluate.ipynb",
        "05_lenses.ipynb",
    ]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        code = [c.source for c in book.cells if c.cell_type == "code"]
        assert "LAYERSWAP_NOTEBOOK_QUICK" in code[0], f"{path.name}: the first code cell must be the parameters cell"
        assert 'BASE = "gemma3-270m"' in code[0], f"{path.name}: the parameters default to the embedded model"
        assert sum(c.cell_type == "markdown" for c in book.cells) >= 5, f"{path.name}: prose between the steps"
        assert "DEMO_OUT" in code[0] and "demo_experts(DEMO_OUT)" in "\n".join(code), f"{path.name}: takes the demo's experts"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, notebook_work: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LAYERSWAP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("LAYERSWAP_NOTEBOOK_WORK", str(notebook_work))
    monkeypatch.setenv("LAYERSWAP_DEMO_OUT", str(notebook_work / "no-demo"))  # train here, whatever demo-out/ holds
    monkeypatch.setenv("LAYERSWAP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("LAYERSWAP_QUIET", "1")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        book, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    client.execute()  # raises on the first failing cell
    assert _images(book) >= 2, f"{path.name} drew fewer figures than expected"

    work = notebook_work / "gemma3-270m-sw" / "quick"
    assert (work / "experts" / "math" / "layerswap.json").exists()
    if path.stem.startswith("03"):
        import yaml

        from layerswap.merge import load_merge_config

        assert load_merge_config(str(work / "merge" / "swap.yaml")).method == "layer_swap"
        mergekit = yaml.safe_load((work / "merge" / "mergekit.yaml").read_text())
        assert mergekit.get("merge_method") in ("passthrough", "linear") and mergekit.get("slices")
    if path.stem.startswith("04"):
        import pandas as pd

        results = pd.read_csv(work / "sweep" / "results.csv")
        assert set(results["task"]) == {"proxy", "flores"}
        assert results["candidate"].nunique() >= 3
        assert all(math.isfinite(v) for v in results["value"])
