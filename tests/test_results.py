"""The results store: versioned, append-only, safe against a killed process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qtts_eval.errors import ResultsError
from qtts_eval.results import SCHEMA_VERSION, V4_COLUMNS, Record, RunStore, load_run


def _record(key: str) -> Record:
    return Record(
        run_id="r",
        request_key=key,
        pipeline="p",
        fixture_id="f",
        language="english",
        category="short",
        voice_id="v",
        mode="icl",
        repeat=0,
        seed=0,
        sampling="greedy",
        text_chars=3,
        frame_budget=8,
        status="ok",
        wall_s=1.0,
        env={"gpu_name": None, "cpu": "x"},
    )


def test_records_round_trip_with_env_columns(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    store.append(_record("a"))
    store.append(_record("b"))
    frame = load_run(tmp_path / "run")
    assert list(frame["request_key"]) == ["a", "b"]
    assert list(frame["env_cpu"]) == ["x", "x"]


def test_parquet_is_written_when_records_disagree_on_a_column_type(tmp_path: Path) -> None:
    # A port's hello said `left_context: 72` where the reference records "exact": one column, two types.
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    for key, value in (("ref", "exact"), ("port", 72), ("other", None)):
        record = _record(key)
        store.append(dataclasses.replace(record, env={**record.env, "left_context": value}))
    frame = pd.read_parquet(store.write_parquet())
    assert list(frame["env_left_context"][:2]) == ['"exact"', "72"] and pd.isna(frame["env_left_context"][2])
    assert list(load_run(tmp_path / "run")["env_left_context"][:2]) == ["exact", 72]  # the JSONL as sent


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    header = json.loads((tmp_path / "run" / "run.json").read_text())
    header["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "run" / "run.json").write_text(json.dumps(header))
    with pytest.raises(ResultsError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        load_run(tmp_path / "run")


def test_newer_record_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    with store.records_path.open("a") as handle:
        handle.write(json.dumps({"schema_version": SCHEMA_VERSION + 1, "request_key": "x"}) + "\n")
    with pytest.raises(ResultsError, match="newer than this qtts-eval"):
        load_run(tmp_path / "run")


def test_a_version_3_record_reads_with_every_column_and_the_v4_ones_empty(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    added = {*V4_COLUMNS, "outcome"}  # outcome is derived on the way up (its own test)
    old = {key: value for key, value in dataclasses.asdict(_record("a")).items() if key not in added}
    with store.records_path.open("a") as handle:
        handle.write(json.dumps({**old, "schema_version": 3}) + "\n")
    (record,) = store.iter_records()
    assert record["schema_version"] == SCHEMA_VERSION == 4
    assert set(record) == {field.name for field in dataclasses.fields(Record)}
    assert all(record[column] is None for column in V4_COLUMNS) and record["wall_s"] == 1.0


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    store.append(_record("a"))
    with pytest.raises(ResultsError, match="already holds a run"):
        RunStore(tmp_path / "run").create({"run_id": "run"})
    assert len(load_run(tmp_path / "run")) == 1


def test_torn_last_line_is_dropped_on_resume(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    store.append(_record("a"))
    with store.records_path.open("a") as handle:
        handle.write('{"schema_version": 1, "request_key": "b", "pipe')  # killed mid-write
    assert len(load_run(tmp_path / "run")) == 1
    assert store.open_for_resume() == {"a"}
    store.append(_record("b"))
    assert list(load_run(tmp_path / "run")["request_key"]) == ["a", "b"]


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    with store.records_path.open("a") as handle:
        handle.write("not json\n")
    with pytest.raises(ResultsError, match=r"records\.jsonl:1: corrupt record"):
        load_run(tmp_path / "run")


@pytest.mark.slow
def test_sigkill_loses_nothing_and_resume_completes(tmp_path: Path) -> None:
    """A real bench on the tiny checkpoint is killed with SIGKILL mid-run, then resumed."""
    command = [
        sys.executable,
        "-m",
        "qtts_eval",
        "bench",
        "--results",
        str(tmp_path),
        "--run-id",
        "killed",
        "--fixture",
        "en_short",
        "--fixture",
        "zh_short",
        "--fixture",
        "en_question",
        "--repeats",
        "2",
        "--max-frames",
        "8",  # the kill and the resume are what is tested, not long utterances
        "--asr",
        "none",
        "--no-progress",
    ]
    records = tmp_path / "killed" / "records.jsonl"
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the bench finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = load_run(tmp_path / "killed")
    assert 3 <= len(before) < 12

    subprocess.run(
        [sys.executable, "-m", "qtts_eval", "bench", "--resume", str(tmp_path / "killed"), "--no-progress"],
        check=True,
        capture_output=True,
    )
    after = load_run(tmp_path / "killed")
    assert len(after) == 12  # 3 fixtures x 1 voice x 2 modes x 2 repeats
    assert after["request_key"].is_unique
    # What was measured before the kill is still there, unchanged.
    pd.testing.assert_frame_equal(after.head(len(before)), before)


def test_version_3_records_gain_the_outcome_they_imply(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.create({"run_id": "run"})
    old = {k: v for k, v in dataclasses.asdict(_record("x")).items() if k != "outcome"}
    rows = {
        "capped": {"frames_generated": 7, "budget_hit": True},  # budget 8 gave 7 frames
        "eos": {"frames_generated": 3, "budget_hit": False},
        "cancelled": {"frames_generated": 3, "info": {"cancelled": True}},
        "hung": {"status": "error", "error": "CandidateTimeout: nothing received within 3 s"},
        "crashed": {"status": "error", "error": "ProtocolError: worker died with exit code 3"},
        "load": {"info": {"outcome": "malformed", "load_kind": "open"}},  # load kept it in info
    }
    with store.records_path.open("a") as handle:
        for key, change in rows.items():
            handle.write(json.dumps({**old, **change, "request_key": key, "schema_version": 3}) + "\n")
    frame = load_run(tmp_path / "run").set_index("request_key")
    assert frame["outcome"].to_dict() == {
        "capped": "length_limited",
        "eos": "eos",
        "cancelled": "cancelled",
        "hung": "timed_out",
        "crashed": "failed",
        "load": "malformed",
    }
    assert "info_outcome" not in frame and frame.loc["load", "info_load_kind"] == "open"
    assert (frame["schema_version"] == SCHEMA_VERSION).all()
