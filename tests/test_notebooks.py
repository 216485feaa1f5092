"""The notebooks run end to end with their default parameters, render their plots, and leave the user's
results directory as it was; a run or report that does not exist is an error that lists those that do.

One of two ways, never both (each runs every notebook in full; the browser checks a superset): where
Chromium is on PATH, a browser test opens each one as a user does: `qtts-eval lab` on loopback, a
double-click in JupyterLab's file browser in Debian's Chromium (driven by playwright, no browser download),
Run All from the Run menu. It must open as a
notebook (not in the text editor), run without an error output, show every plot as an image, and leave
results/ and notebooks/ as they were; a screenshot of each notebook is kept where the test prints. Where
there is no Chromium, it is skipped, saying how to install one, and nbclient executes each jupytext script
in a real kernel instead (any cell error fails, every plot cell must leave a PNG). Demo data goes to the
session's scratch directory (QTTS_EVAL_SCRATCH).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from qtts_eval import report
from qtts_eval.cli import main
from qtts_eval.errors import ResultsError
from qtts_eval.results import RUN_FILE

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))
PLOT_CALLS = ("report.plot_", "report.parity_images")  # cells that must leave at least one PNG
CELL_TIMEOUT_S = 300  # one cell; building the demo runs takes ~1 min on 2 busy cores


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory``: relative path -> (size, modification time in ns)."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_every_notebook_is_found_with_one_parameters_cell() -> None:
    import jupytext

    assert [path.stem for path in NOTEBOOKS] == [
        "01_quickstart",
        "02_latency",
        "03_parity",
        "04_regressions",
        "05_compare",
        "06_parity_sweep",
    ]
    for path in NOTEBOOKS:
        cells = jupytext.read(path).cells
        tagged = [cell for cell in cells if "parameters" in cell.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes_and_plots_render_where_no_browser_does(path: Path, notebook_scratch: Path) -> None:
    if any(shutil.which(name) for name in BROWSERS):
        pytest.skip("Chromium is on PATH: the browser test runs every notebook, with stricter checks")
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    results_before = tree(REPO / "results")
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    ).execute()  # raises CellExecutionError, naming the cell, on any error
    assert tree(REPO / "results") == results_before, f"{path.name} wrote into results/"

    plot_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and any(
        call in cell.source for call in PLOT_CALLS
    )]  # fmt: skip
    assert plot_cells, f"{path.name}: no plot cells"
    for cell in plot_cells:
        images = [out for out in cell.outputs if "image/png" in out.get("data", {})]
        assert images, f"{path.name}: cell did not render a plot:\n{cell.source}"


def test_a_missing_run_lists_the_runs_that_exist_and_creates_nothing(tmp_path: Path) -> None:
    for run_id in ("notebook-tiny", "2026-01-01/nightly"):
        (tmp_path / run_id).mkdir(parents=True)
        (tmp_path / run_id / RUN_FILE).write_text("{}")
    before = tree(tmp_path)
    with pytest.raises(ResultsError) as caught:
        report.find_run(tmp_path, "notebok-tiny")
    message = str(caught.value)
    assert "did you mean 'notebook-tiny'?" in message
    assert "2026-01-01/nightly" in message and "qtts-eval bench --run-id notebok-tiny" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no run"):
        report.find_run(tmp_path / "empty", "other")
    assert tree(tmp_path) == before


def test_a_missing_parity_report_lists_those_that_exist(tmp_path: Path) -> None:
    (tmp_path / "sweep" / "fault-talker-weight").mkdir(parents=True)
    (tmp_path / "sweep" / "fault-talker-weight" / report.REPORT_FILE).write_text("{}")
    with pytest.raises(ResultsError, match="did you mean 'sweep/fault-talker-weight'"):
        report.find_parity(tmp_path, "sweep/fault-talker-weigth")
    with pytest.raises(ResultsError, match="parity report"):
        report.find_parity_sweep(tmp_path, "sweeps")
    assert report.find_parity_sweep(tmp_path, "sweep") == tmp_path / "sweep"


def _records(pipeline: str, frames: int, first_byte_s: float) -> list[dict[str, object]]:
    return [
        {
            "pipeline": pipeline,
            "fixture_id": "en_short",
            "voice_id": "slt",
            "mode": "icl",
            "repeat": repeat,
            "status": "ok",
            "frames_generated": frames,
            "first_playable_s": 2 * first_byte_s * (1 + 0.01 * repeat),
            "first_byte_s": first_byte_s * (1 + 0.01 * repeat),
            "rtf": 1.0,
            "peak_mem_bytes": np.nan,  # an external candidate on CPU has none
        }
        for repeat in range(3)
    ]


def test_comparison_flags_a_candidate_that_stops_early_and_says_codes_are_not_recorded() -> None:
    frame = pd.DataFrame(_records("reference", 20, 0.4) + _records("port", 12, 0.2))
    table = report.comparison_table(frame)
    row = table.iloc[0]  # over all pairs
    assert row["candidate"] == "port" and row["first_byte_s_ratio"] == pytest.approx(0.5)
    assert np.isnan(row["first_byte_s_low"])  # 3 pairs: too few for an interval
    assert "stops_earlier" in row["flags"]  # faster, but it did less work: the table says so
    assert "no_codes" in row["flags"] and np.isnan(row["codes_match"])  # same codes unknown, not assumed
    same = report.comparison_table(pd.DataFrame(_records("reference", 20, 0.4) + _records("port", 20, 0.4)))
    assert "stops" not in same["flags"].iloc[0] and same["first_byte_s_ratio"].iloc[0] == pytest.approx(1.0)
    assert report.plot_comparison(table).axes[0].get_xscale() == "log"
    with pytest.raises(ResultsError, match="did you mean 'port'"):
        report.comparison_table(frame, "prot")


def test_a_port_returning_the_whole_budget_is_flagged_but_not_called_different_codes() -> None:
    # The reference returns budget - 1 frames when capped; a port honouring the budget returns one more.
    reference = _records("reference", 40, 0.4)
    reference = [{**r, "frame_budget": 41} for r in reference]
    extra_frame = {"frames_generated": 41, "codes_match_reference": 40 / 41, "first_divergent_frame": 40}
    same_prefix = [{**r, **extra_frame, "pipeline": "port"} for r in reference]
    run = pd.DataFrame([{**r, "run_id": "r1"} for r in reference + same_prefix])
    row = report.comparison_table(run).iloc[0]
    assert row["codes_match"] == 1.0 and row["flags"] == "" and row["notes"] == "whole_budget"
    diverged = [{**r, "first_divergent_frame": 10, "codes_match_reference": 0.25} for r in same_prefix]
    row = report.comparison_table(pd.DataFrame([{**r, "run_id": "r1"} for r in reference + diverged])).iloc[0]
    assert row["codes_match"] == 0.0 and row["flags"] == "codes_differ"


def test_lab_refuses_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "--dir", str(tmp_path / "notebooks")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_lab_layers_the_jupytext_viewer_over_existing_jupyter_config(tmp_path: Path) -> None:
    from qtts_eval.cli.lab import lab_environment, write_lab_config

    written = json.loads(write_lab_config(tmp_path).read_text())
    viewers = written["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"
    environment = lab_environment(tmp_path, {"JUPYTER_CONFIG_PATH": "/etc/site-jupyter"})
    assert environment["JUPYTER_CONFIG_PATH"] == os.pathsep.join([str(tmp_path), "/etc/site-jupyter"])


# --- in a real browser ---------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser")  # Debian's package, and its name elsewhere
TOKEN = "qtts-eval-browser-test"
SERVER_START_S = 120  # JupyterLab answers /api/status in ~5 s idle, ~30 s on 2 busy cores
OPEN_S = 120  # double-click -> notebook shown with its kernel idle
RUN_ALL_S = 600  # one notebook's Run All; the first builds the demo runs (~1 min idle, ~4 min on busy cores)
# Settings of this test's JupyterLab user: no autosave (Run All must not write the notebooks or their .ipynb
# pairs into the checkout), kernels shut down with their tab, no news or update check (no network). The
# default viewer is NOT set here: it must come from `qtts-eval lab`.
USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"kernelShutdown": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
# The open notebook's state, from the JupyterLab application object (exposed with expose_app_in_browser).
NOTEBOOK_STATE_JS = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.content || !panel.content.model) return null;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const cells = [];
    for (let i = 0; i < panel.content.model.cells.length; i++) {
        const cell = panel.content.model.cells.get(i);
        // Run All leaves empty code cells unnumbered: they are not cells to run.
        if (cell.type !== "code" || !cell.sharedModel.getSource().trim()) continue;
        cells.push({source: cell.sharedModel.getSource(), count: cell.executionCount,
                    outputs: cell.outputs.toJSON()});
    }
    const images = Array.from(panel.node.querySelectorAll(".jp-RenderedImage img"));
    return {kernel: kernel ? kernel.status : null, cells: cells,
            rendered_images: images.filter((img) => img.complete && img.naturalWidth > 0).length};
}"""


def find_chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium on PATH, so the notebooks cannot be opened in a browser; install it "
        "(Debian: apt-get install -y chromium, as .ci/run does) to run this test"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def lab_server(directory: Path, home: Path) -> Iterator[str]:
    """`qtts-eval lab --dir DIRECTORY` on loopback, with an isolated JupyterLab user under ``home``."""
    for name, values in USER_SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(json.dumps(values))
    environment = {
        **os.environ,
        "JUPYTER_TOKEN": TOKEN,
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
    }
    port = free_port()
    jupyter_args = [
        "--no-browser",
        f"--port={port}",
        "--LabApp.expose_app_in_browser=True",
        # Opening a file makes a checkpoint of it, by default in .ipynb_checkpoints beside it: not in the
        # checkout. An absolute directory is taken as is.
        f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",
    ]
    if os.geteuid() == 0:  # CI containers run as root, which Jupyter refuses unless told
        jupyter_args.append("--allow-root")
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "qtts_eval", "lab", "--dir", str(directory), "--", *jupyter_args],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + SERVER_START_S
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"JupyterLab did not start:\n{(home / 'server.log').read_text()[-3000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()  # Jupyter shuts its kernels down on SIGTERM
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def open_and_run_all(page: Any, path: Path, screenshots: Path) -> list[str]:
    """Double-clicks ``path`` in the file browser, runs all its cells from the Run menu, keeps a screenshot;
    returns what is wrong: opened as text, an error output, a cell not run, a plot not shown as an image."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    screenshot = str(screenshots / f"{path.stem}.png")
    step = "open"
    try:
        page.locator(".jp-DirListing-item", has_text=path.name).dblclick(timeout=OPEN_S * 1000)
        current = page.locator(".jp-MainAreaWidget:not(.lm-mod-hidden)")
        current.locator(".jp-Notebook, .jp-FileEditor").first.wait_for(timeout=OPEN_S * 1000)
        if current.locator(".jp-FileEditor").count():
            page.screenshot(path=screenshot)
            return [f"{path.name} opened as a text file, not a notebook"]
        step = "wait for its kernel"
        page.wait_for_function(f"() => ({NOTEBOOK_STATE_JS})()?.kernel === 'idle'", timeout=OPEN_S * 1000)
        step = "Run All"
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        page.wait_for_function(
            f"""() => {{
                const state = ({NOTEBOOK_STATE_JS})();
                const errored = state.cells.some((c) => c.outputs.some((o) => o.output_type === 'error'));
                return state.kernel === 'idle' && (errored || state.cells.every((c) => c.count !== null));
            }}""",
            timeout=RUN_ALL_S * 1000,
            polling=1000,
        )
    except PlaywrightTimeout as exc:
        page.screenshot(path=screenshot)
        state = page.evaluate(f"({NOTEBOOK_STATE_JS})()")
        return [f"{path.name}: timed out at {step} ({exc}); screenshot {screenshot}; state {state}"]
    state = page.evaluate(f"({NOTEBOOK_STATE_JS})()")
    images = current.locator(".jp-RenderedImage img")
    if images.count():
        images.first.scroll_into_view_if_needed()
    page.screenshot(path=screenshot)
    page.keyboard.press("Alt+w")  # close the tab, not saving what Run All changed; its kernel shuts down
    page.locator(".jp-Dialog button", has_text="Discard").click()

    problems = [
        f"{path.name}: {output['ename']}: {output['evalue']}, in cell:\n{cell['source']}"
        for cell in state["cells"]
        for output in cell["outputs"]
        if output["output_type"] == "error"
    ]
    problems += [
        f"{path.name}: cell not run:\n{cell['source']}" for cell in state["cells"] if cell["count"] is None
    ]
    plots = [cell for cell in state["cells"] if any(call in cell["source"] for call in PLOT_CALLS)]
    pngs = 0
    for cell in plots:
        count = sum("image/png" in output.get("data", {}) for output in cell["outputs"])
        pngs += count
        if not count:
            problems.append(f"{path.name}: plot cell has no image:\n{cell['source']}")
    if state["rendered_images"] < pngs:
        problems.append(f"{path.name}: {pngs} plots, {state['rendered_images']} shown as images")
    return problems


def run_in_browser(directory: Path, notebooks: list[Path], home: Path, screenshots: Path) -> list[str]:
    """Opens and runs every one of ``notebooks`` (files in ``directory``) in Chromium; what is wrong."""
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    problems = []
    with lab_server(directory, home) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab?token={TOKEN}")
        for path in notebooks:
            problems += open_and_run_all(page, path, screenshots)
        browser.close()
    return problems


@pytest.mark.slow
def test_every_notebook_opens_on_double_click_and_runs_all_in_chromium(
    notebook_scratch: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    screenshots = tmp_path_factory.mktemp("notebook-screenshots")
    with capsys.disabled():
        print(f"\nnotebook screenshots: {screenshots}")
    results_before, notebooks_before = tree(REPO / "results"), tree(NOTEBOOKS_DIR)
    home = tmp_path_factory.mktemp("jupyterlab-user")
    assert run_in_browser(NOTEBOOKS_DIR, NOTEBOOKS, home, screenshots) == []
    assert tree(REPO / "results") == results_before, "running the notebooks wrote into results/"
    assert tree(NOTEBOOKS_DIR) == notebooks_before, "running the notebooks changed notebooks/"


PLANTED = {
    "01_raises.py": "# %%\nraise RuntimeError('planted')\n\n# %%\nprint('after the error')\n",
    "02_no_image.py": "# %%\nfig = None  # report.plot_ was meant here\n",
}


@pytest.mark.slow
def test_the_browser_check_catches_an_error_a_cell_not_run_and_a_missing_plot(tmp_path: Path) -> None:
    header = NOTEBOOKS[0].read_text().split("# %%")[0]  # the jupytext header: kernel python3
    for name, source in PLANTED.items():
        (tmp_path / "planted" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "planted" / name).write_text(header + source)
    notebooks = sorted((tmp_path / "planted").glob("*.py"))
    problems = "\n".join(run_in_browser(tmp_path / "planted", notebooks, tmp_path / "home", tmp_path))
    assert "01_raises.py: RuntimeError: planted" in problems
    assert "01_raises.py: cell not run:\nprint('after the error')" in problems
    assert "02_no_image.py: plot cell has no image" in problems
