"""The `qtts-eval` command as the README uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qtts_eval.results import load_run


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qtts_eval", *args], capture_output=True, text=True, timeout=600
    )


def test_bench_prints_a_table_and_writes_a_loadable_run(tmp_path: Path) -> None:
    done = _cli(
        "bench",
        "--results",
        str(tmp_path),
        "--run-id",
        "cli",
        "--fixture",
        "en_short",
        "--fixture",
        "ja_short",
        "--repeats",
        "1",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "fixture_id" in done.stdout and "en_short" in done.stdout and "ja_short" in done.stdout
    assert "weights: synthetic (tiny, random)" in done.stdout
    frame = load_run(tmp_path / "cli")
    assert len(frame) == 4  # 2 fixtures x 1 voice x 2 modes x 1 repeat
    assert set(frame["status"]) == {"ok"}
    for column in (
        "env_torch",
        "env_transformers",
        "env_qwen_tts",
        "env_cpu",
        "env_weights_hash",
        "env_fixtures_version",
        "env_dtype",
        "env_device",
    ):
        assert frame[column].notna().all(), column
    assert frame["env_synthetic"].all()
    assert (frame["rtf"] > 0).all() and (frame["peak_mem_bytes"] > 0).all()
    # The roofline: tiny's weights at the run's fp32, over this machine's measured bandwidth.
    assert (frame["roofline_floor_frame_s"] > 0).all()
    assert (
        (frame["roofline_floor_frame_s"] * frame["roofline_bandwidth_bytes_per_s"])
        .round()
        .eq(frame["roofline_weight_bytes_per_frame"])
        .all()
    )
    assert "roofline:" in done.stdout and "x_floor" in done.stdout
    # No energy on CPU, and each record says why.
    assert frame["energy_j_per_audio_s"].isna().all()
    assert frame["metric_error_energy_j_per_audio_s"].str.contains("no board power on cpu").all()
    assert (tmp_path / "cli" / "records.parquet").is_file()
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["rows"] and summary["roofline"][0]["pipeline"] == "reference"


def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path: Path) -> None:
    done = _cli("bench", "--results", str(tmp_path), "--fixture", "en_shrot", "--no-progress")
    assert done.returncode == 2
    assert "error: unknown text id 'en_shrot'; did you mean 'en_short'" in done.stderr
    assert not any(tmp_path.iterdir())


def test_checkpoint_command_reports_the_synthetic_weights() -> None:
    done = _cli("checkpoint", "tiny", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["synthetic"] is True and info["preset"] == "tiny"
    assert (Path(info["path"]) / "config.json").is_file()
