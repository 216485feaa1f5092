"""`qtts-eval lab`: JupyterLab on the notebooks, where a double-click opens a jupytext script as a notebook.

JupyterLab opens `.py` files in its text editor unless the document manager's default viewer for Python is
jupytext's "Jupytext Notebook". This command layers that one default onto JupyterLab's own settings for this
server only (a `labconfig/default_setting_overrides.json` in a scratch directory put first on
JUPYTER_CONFIG_PATH); nothing in the user's or the environment's Jupyter configuration is written, and a
viewer the user chose in JupyterLab's settings still wins.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from qtts_eval.errors import QttsEvalError

# The document manager's defaults for this server: Python files open in jupytext's notebook view.
DEFAULT_SETTING_OVERRIDES = {
    "@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}
}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "lab",
        help="open the notebooks in JupyterLab (double-click opens a notebook)",
        description="Starts JupyterLab on the notebooks directory, bound to 127.0.0.1, with jupytext's "
        "notebook view as the default for .py files. Needs the notebooks extra: "
        "pip install -e '.[notebooks]'. Arguments after '--' go to jupyter lab unchanged "
        "(e.g. -- --port 8890 --no-browser).",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("notebooks"), help="directory to serve (default: notebooks)"
    )
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def lab_command(directory: Path, jupyter_args: list[str]) -> list[str]:
    """The jupyter lab command line serving ``directory`` on loopback."""
    return [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={directory.resolve()}",
        "--ServerApp.ip=127.0.0.1",
        *jupyter_args,
    ]


def write_lab_config(config_dir: Path) -> Path:
    """Writes the default-viewer overrides under ``config_dir`` (a Jupyter config directory)."""
    path = config_dir / "labconfig" / "default_setting_overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(DEFAULT_SETTING_OVERRIDES, indent=2) + "\n")
    return path


def lab_environment(config_dir: Path, base: dict[str, str]) -> dict[str, str]:
    """``base`` with ``config_dir`` first on JUPYTER_CONFIG_PATH (highest priority), other entries kept."""
    paths = [str(config_dir), *filter(None, base.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
    return {**base, "JUPYTER_CONFIG_PATH": os.pathsep.join(paths)}


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not directory.is_dir():
        raise QttsEvalError(
            f"{directory}: no such directory; run this from the repository root, or name the notebooks folder"
        )
    missing = [name for name in ("jupyterlab", "jupytext") if importlib.util.find_spec(name) is None]
    if missing:
        raise QttsEvalError(
            f"{' and '.join(missing)} not installed; "
            "install the notebooks extra: pip install -e '.[notebooks]'"
        )
    jupyter_args = [arg for arg in args.jupyter_args if arg != "--"]
    with tempfile.TemporaryDirectory(prefix="qtts-eval-lab-") as config_dir:
        write_lab_config(Path(config_dir))
        environment = lab_environment(Path(config_dir), dict(os.environ))
        with subprocess.Popen(lab_command(directory, jupyter_args), env=environment) as server:
            # Stopped with SIGTERM (a service manager, a test): stop the server too, then clean up.
            signal.signal(signal.SIGTERM, lambda *_: server.terminate())
            while True:
                try:
                    return server.wait()
                except KeyboardInterrupt:  # Jupyter gets Ctrl-C too and asks to confirm: wait for it to exit
                    continue
