"""The scoreboard: a planted fault served as a candidate appears in the table at its first failing stage; a
candidate whose install fails keeps its row with the reason while the others are scored; a spent budget skips
parts and says so; a resumed scoreboard scores what is left and nothing finished again. Opt-in: the real
qwentts.cpp port on 0.6b-shallow (QTTS_EVAL_PORT_TESTS=1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qtts_eval import environment
from qtts_eval.cli import main
from qtts_eval.errors import ResultsError
from qtts_eval.scoreboard import (
    SETTINGS_FILE,
    Part,
    Row,
    Scoreboard,
    Settings,
    load_causes,
    part_path,
    to_markdown,
)

FAULT = "fault:talker-weight"  # perturbs talker layer 1: caught at talker.prefill.layer.01 (docs/parity.md)
FAULT_STAGE = "talker.prefill.layer.01"
PORT = "qwentts-cpp"  # not installed in the test session's cache; pip --no-index cannot install it


def _load(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "scoreboard.json").read_text())
    return data


def _parts(data: dict[str, Any], spec: str) -> dict[str, Any]:
    row = next(row for row in data["rows"] if row["candidate"] == spec)
    parts: dict[str, Any] = row["parts"]
    return parts


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scoreboard of the port (its install fails) and the fault: first with a budget that runs out before
    anything, then resumed with the default budget."""
    out = tmp_path_factory.mktemp("scoreboard") / "board"
    first = main(
        ["scoreboard", "--no-registry", "--candidate", PORT, "--candidate", FAULT, "--model", "tiny",
         "--fixture", "en_short", "--frames", "2", "--part", "install", "--part", "parity-xvector",
         "--install", "--pip-arg=--no-index", "--budget-s", "1e-9", "--out", str(out)]
    )  # fmt: skip
    spent = _load(out)
    resumed = main(["scoreboard", "--resume", str(out)])
    return {"out": out, "first": first, "spent": spent, "resumed": resumed, "data": _load(out)}


def test_a_spent_budget_skips_every_part_and_says_so(board: dict[str, Any]) -> None:
    assert board["first"] == 1  # not every part ran
    for spec in (PORT, FAULT):
        parts = _parts(board["spent"], spec)
        assert set(parts) == {"install", "parity-xvector"}
        assert {p["status"] for p in parts.values()} == {"skipped"}
        assert all("budget of 1e-09 s was spent" in p["reason"] for p in parts.values())


def test_a_planted_fault_served_as_a_candidate_fails_at_its_stage(board: dict[str, Any]) -> None:
    parts = _parts(board["data"], FAULT)
    assert parts["install"]["status"] == "done"
    parity = parts["parity-xvector"]
    assert parity["status"] == "done"
    (row,) = parity["data"]["sweep"]["rows"]
    assert row["verdict"] == "fail" and row["first_failing_stage"] == FAULT_STAGE
    assert {"run": "free", "group": "talker", "stage": FAULT_STAGE, "onset": ""} in row["group_failures"]
    markdown = (board["out"] / "scoreboard.md").read_text()
    sweep = "fault-talker-weight/parity-xvector/sweep"
    verdicts = (
        f"| {FAULT} | suite environment | not scored | not scored | [FAIL 1/1 at {FAULT_STAGE}]({sweep}.md) |"
    )
    assert verdicts in markdown
    assert f"free talker at {FAULT_STAGE}" in markdown  # the parity table: every failing group
    page = (board["out"] / "scoreboard.html").read_text()
    assert f"href='{sweep}.html'" in page and (board["out"] / f"{sweep}.html").is_file()


def test_a_candidate_whose_install_fails_keeps_its_row_with_the_reason(board: dict[str, Any]) -> None:
    assert board["resumed"] == 1
    parts = _parts(board["data"], PORT)
    assert parts["install"]["status"] == "failed"
    assert (
        "pip failed" in parts["install"]["reason"]
        and "realtimetts-qwen-native-cpu" in parts["install"]["reason"]
    )
    assert parts["parity-xvector"]["status"] == "skipped"
    assert "not installed" in parts["parity-xvector"]["reason"]
    assert f"| {PORT} | FAILED: PipelineError: pip failed" in (board["out"] / "scoreboard.md").read_text()


def test_resume_scores_nothing_finished_again_nor_claims_the_measurements(
    board: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = board["out"]
    finished = [part_path(out, Row(FAULT), Part.PARITY_XVECTOR), part_path(out, Row(PORT), Part.INSTALL)]
    before = [path.read_bytes() for path in finished]
    report = out / "fault-talker-weight" / "parity-xvector" / "en_short-xvector-slt" / "report.json"
    stamp = report.stat().st_mtime_ns
    measured_on = _load(out)["machine"]
    monkeypatch.setattr(environment, "fingerprint", lambda: {"cpu": "another machine"})
    assert main(["scoreboard", "--resume", str(out)]) == 1
    assert _load(out)["machine"] == measured_on  # rendered elsewhere, measured here
    assert [path.read_bytes() for path in finished] == before  # the failed install too: pip ran once
    assert report.stat().st_mtime_ns == stamp
    assert _parts(_load(out), PORT)["parity-xvector"]["reason"] == "not installed (install failed)"


def test_causes_are_written_next_to_the_verdict_they_explain(board: dict[str, Any], tmp_path: Path) -> None:
    causes = tmp_path / "causes.toml"
    causes.write_text(
        f'[[cause]]\ncandidate = "{FAULT}"\npart = "parity-xvector"\nat = "{FAULT_STAGE}"\n'
        'cause = "the planted weight edit (qtts_eval/parity/faults.py)"\n'
    )
    without = to_markdown(board["data"])
    assert f"({FAULT_STAGE}: no cause written)" in without
    assert "the planted weight edit (qtts_eval/parity/faults.py)" in to_markdown(
        board["data"], load_causes(causes)
    )
    causes.write_text("[[cause]]\ncandidate = 1\n")
    with pytest.raises(ResultsError, match="not a causes file"):
        load_causes(causes)


def test_bad_input_is_refused_before_anything_runs(
    board: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scoreboard", "--no-registry", "--candidate", "fault:talker-wieght"]) == 2
    assert "known: fault:no-resample" in capsys.readouterr().err
    assert main(["scoreboard", "--no-registry", "--candidate", "qwentts-cp"]) == 2
    assert "Did you mean qwentts-cpp" in capsys.readouterr().err
    assert main(["scoreboard", "--no-registry", "--candidate", FAULT, "--out", str(board["out"])]) == 2
    assert f"continue it with --resume {board['out']}" in capsys.readouterr().err
    with pytest.raises(ResultsError, match="unknown parts"):
        Settings(candidates=(FAULT,), parts=("parity",))
    assert (board["out"] / SETTINGS_FILE).is_file()


# --- the real port ----------------------------------------------------------------------------------------
# The machine's cache (environment, 0.6b-shallow, its GGUF export); ~5 GB of memory beside the reference.


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("QTTS_EVAL_PORT_TESTS") != "1", reason="set QTTS_EVAL_PORT_TESTS=1")
def test_qwentts_cpp_on_the_scoreboard(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """docs/scoreboard.md: conformance passes; in x-vector mode (its layout) the codes equal the reference's
    and the first failure is the decoded audio (its codec decoder's arithmetic)."""
    monkeypatch.setenv("QTTS_EVAL_CACHE", str(Path.home() / ".cache" / "qtts-eval"))
    settings = Settings(
        candidates=(PORT,),
        fixtures=("en_short",),
        parity_frames=2,
        conformance_frames=2,
        parts=("install", "conformance", "parity-xvector"),
        options={"threads": 1},
        install=True,
    )
    data = Scoreboard.create(tmp_path / "board", settings).run()
    parts = _parts(data, PORT)
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(settings.parts, "done")
    assert parts["conformance"]["data"]["failed"] == 0
    (row,) = parts["parity-xvector"]["data"]["sweep"]["rows"]
    assert row["codes_exact"] == 1.0 and row["first_failing_stage"] == "output.wav"


def test_bench_sides_give_ms_per_frame_and_its_multiple_of_the_bandwidth_floor() -> None:
    import pandas as pd

    from qtts_eval.scoreboard import side_stats

    side = pd.DataFrame(
        {
            "status": ["ok", "ok", "error"],
            "frames_generated": [10, 20, 5],
            "wall_s": [1.0, 4.0, 0.1],  # 100 and 200 ms per frame; the error is left out
            "roofline_floor_frame_s": [0.05, 0.05, 0.05],
        }
    )
    stats = side_stats(side)
    assert stats["ms_per_frame"]["value"] == pytest.approx(150.0) and stats["ms_per_frame"]["n"] == 2
    assert stats["floor_ratio"]["value"] == pytest.approx(3.0)  # 150 ms against a 50 ms floor
    no_floor = side_stats(side.drop(columns="roofline_floor_frame_s"))
    assert no_floor["floor_ratio"]["value"] is None and no_floor["floor_ratio"]["n"] == 0
