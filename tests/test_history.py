"""Results history: runs listed across commits and machines; a planted step is found where it was planted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtts_eval.cli import main
from qtts_eval.errors import ResultsError
from qtts_eval.history import StepOptions, detect_steps, history_steps, load_history
from qtts_eval.results import Record, RunStore

REQUESTS = 6  # per run
NOISE = 0.03  # relative spread of per-request values in the constructed runs


def _write_run(root: Path, index: int, rtf: float, cpu: str, rng: np.random.Generator) -> None:
    run_id = f"run{index:02d}"
    store = RunStore(root / run_id)
    store.create({"run_id": run_id, "created_at": f"2026-11-{index + 1:02d}T00:00:00+00:00"})
    env = {
        "cpu": cpu,
        "dtype": "float32",
        "fixtures_hash": "f1",
        "git_commit": f"{index:040x}",
        "synthetic": True,
    }
    for request in range(REQUESTS):
        value = float(rtf * (1 + NOISE * rng.standard_normal()))
        store.append(
            Record(
                run_id=run_id,
                request_key=f"p|t|v|icl|{request}",
                pipeline="p",
                fixture_id="t",
                language="english",
                category="short",
                voice_id="v",
                mode="icl",
                repeat=request,
                seed=request,
                sampling="greedy",
                text_chars=40,
                frame_budget=36,
                status="ok",
                rtf=value,
                first_byte_s=0.1 * value,
                env=env,
            )
        )


def _history(root: Path, rtfs: list[float], cpus: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for index, (rtf, cpu) in enumerate(zip(rtfs, cpus, strict=True)):
        _write_run(root, index, rtf, cpu, rng)
    return root


def test_planted_step_is_found_at_its_run(tmp_path: Path) -> None:
    root = _history(tmp_path, [1.0, 1.0, 1.0, 1.0, 1.3, 1.3, 1.3], ["cpu-a"] * 7)
    history = load_history(root)
    assert list(history.runs["run_id"]) == [f"run{i:02d}" for i in range(7)]
    assert set(history.runs["n"]) == {REQUESTS}
    steps = history_steps(history, "rtf")
    assert list(steps["run_id"]) == ["run04"]
    assert steps["change"].iloc[0] == pytest.approx(0.3, abs=0.05)


def test_noise_only_history_has_no_steps(tmp_path: Path) -> None:
    history = load_history(_history(tmp_path, [1.0] * 7, ["cpu-a"] * 7))
    assert history_steps(history, "rtf").empty


def test_a_machine_change_is_not_a_step(tmp_path: Path) -> None:
    history = load_history(_history(tmp_path, [1.0, 1.0, 1.0, 1.3, 1.3, 1.3], ["cpu-a"] * 3 + ["cpu-b"] * 3))
    assert history.runs["series"].nunique() == 2
    assert history_steps(history, "rtf").empty


def test_detect_steps_on_values() -> None:
    rng = np.random.default_rng(1)
    levels = [1.0, 1.0, 1.0, 0.7, 0.7, 0.7, 0.7, 1.2, 1.2, 1.2]  # a speed-up, then a slowdown
    series = [level * (1 + NOISE * rng.standard_normal(REQUESTS)) for level in levels]
    steps = detect_steps(series)
    assert [step.index for step in steps] == [3, 7]
    assert steps[0].change < -0.25 and steps[1].change > 0.5
    assert detect_steps(series, StepOptions(min_change=0.9)) == []  # the change threshold applies too
    with pytest.raises(ResultsError, match="window"):
        detect_steps(series, StepOptions(window=0))


def test_cli_lists_runs_and_marks_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _history(tmp_path, [1.0, 1.0, 1.0, 1.3, 1.3, 1.3], ["cpu-a"] * 6)
    assert main(["history", str(root), "--metric", "rtf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if "rtf +" in line]
    assert len(marked) == 1 and marked[0].split()[0] == "run03", lines
    assert main(["history", str(tmp_path / "nowhere")]) == 2


def test_a_run_resumed_on_another_machine_is_marked_mixed(tmp_path: Path) -> None:
    root = _history(tmp_path, [1.0, 1.0], ["cpu-a"] * 2)
    records = root / "run01" / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:3] + [line.replace('"cpu-a"', '"cpu-b"') for line in lines[3:]]))
    assert list(load_history(root).runs["mixed"]) == [False, True]
