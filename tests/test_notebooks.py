"""The notebooks run end to end on the tiny checkpoint, and their plot cells render images.

Each jupytext percent script is converted to a notebook, its `parameters` cell is followed by an injected
cell pointing RESULTS_ROOT at a temporary directory (as papermill injects parameters), and nbclient executes
it in a real kernel: any cell error fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))
PLOT_CALLS = ("report.plot_", "report.parity_images")  # cells that must leave at least one PNG
CELL_TIMEOUT_S = 300  # one cell; the first bench on the tiny checkpoint takes ~15 s on 2 cores


@pytest.fixture(scope="module")
def results_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebook-results")  # shared: later notebooks reuse the first's run


def test_every_notebook_is_found() -> None:
    assert [path.stem for path in NOTEBOOKS] == ["01_quickstart", "02_latency", "03_parity", "04_regressions"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes_and_plots_render(path: Path, results_root: Path) -> None:
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell(f"RESULTS_ROOT = {str(results_root)!r}")
    notebook.cells.insert(tagged[0] + 1, injected)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    ).execute()  # raises CellExecutionError, naming the cell, on any error

    plot_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and any(
        call in cell.source for call in PLOT_CALLS
    )]  # fmt: skip
    assert plot_cells, f"{path.name}: no plot cells"
    for cell in plot_cells:
        images = [out for out in cell.outputs if "image/png" in out.get("data", {})]
        assert images, f"{path.name}: cell did not render a plot:\n{cell.source}"
