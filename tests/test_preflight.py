"""The campaign preflight: one line naming what is missing, before anything heavy; ok on CPU where it can."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtts_eval.cli.preflight import PreflightFailed, preflight

ROOT = Path(__file__).resolve().parent.parent
CPU_FLAGS = ["--model", "tiny", "--device", "cpu", "--speaker-embedder", "none", "--asr", "none"]


def test_a_planted_missing_package_stops_it_early_with_one_line_naming_it(tmp_path: Path) -> None:
    planted = tmp_path / "planted" / "soundfile"
    planted.mkdir(parents=True)
    # Importing it fails as an absent package does: the image the campaign targets has no soundfile.
    (planted / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'soundfile'\", name='soundfile')\n"
    )
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "planted"), str(ROOT)]),
        "QTTS_EVAL_CACHE": str(cache),
    }
    done = subprocess.run(
        [sys.executable, "-m", "qtts_eval.cli.preflight", "--pipeline", "reference", *CPU_FLAGS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("preflight FAILED: missing Python package 'soundfile'"), (
        lines
    )
    assert not cache.exists()  # stopped before any checkpoint was built or any model loaded


def test_a_misspelled_pipeline_is_named_before_anything_loads() -> None:
    with pytest.raises(PreflightFailed, match="unknown pipeline 'referense'"):
        preflight(["--pipeline", "referense", *CPU_FLAGS])


def test_the_reference_passes_on_cpu_with_the_campaigns_flags() -> None:
    line = preflight(["--pipeline", "reference", "--codec-dtype", "float32", "--mode", "xvector", *CPU_FLAGS])
    assert line.startswith("preflight ok: reference on cpu (cpu), 1 requests of 2 frames"), line


def test_a_dead_workers_reason_is_the_last_line_of_its_stderr() -> None:
    from qtts_eval.cli.preflight import _first_line
    from qtts_eval.errors import ProtocolError

    died = ProtocolError(
        "worker died with exit code 1; its stderr: /tmp/x/port.stderr.log (last lines: Traceback (most "
        'recent call last): |   File "model.py", line 188 | ValueError: CUDA graphs require CUDA device)'
    )
    assert _first_line(died) == (
        "ProtocolError: worker died with exit code 1: ValueError: CUDA graphs require CUDA device"
    )
