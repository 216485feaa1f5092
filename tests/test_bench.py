"""The bench runner: matrix, budgets, bad input, and candidates that fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig, build_matrix
from qtts_eval.budget import estimated_frames, frame_budget
from qtts_eval.errors import BenchError, FixtureError, PipelineError, RequestError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.pipelines.base import AudioChunk, CloneMode, Event, Pipeline, Request, StreamEnd
from qtts_eval.pipelines.options import scope
from qtts_eval.results import load_run

SILENCE = np.zeros(1920 * 4, np.float32)


class CrashOnChinese(Pipeline):
    """A candidate that crashes on one language and otherwise returns four frames of silence."""

    def load(self) -> None:
        pass

    def stream(self, request: Request) -> Iterator[Event]:
        if request.language == "chinese":
            raise RuntimeError("segfault-like failure in the candidate")
        yield AudioChunk(SILENCE)
        yield StreamEnd(frames_generated=4)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "synthetic": True}


@pytest.fixture(autouse=True)
def _register() -> Iterator[None]:
    pipelines.register("crash-on-chinese", CrashOnChinese)
    yield


def test_frame_budget_follows_text_length() -> None:
    assert estimated_frames("a" * 140, "english") == 125  # 10 s at 14 chars/s
    assert estimated_frames("字" * 45, "chinese") == 125  # 10 s at 4.5 chars/s
    assert estimated_frames("Hi", "english") == 8  # the floor
    assert frame_budget("a" * 140, "english", synthetic=True) == 125
    assert frame_budget("a" * 140, "english", synthetic=False) == 275  # 2x + 25 frames of head room


def test_matrix_interleaves_pipelines_and_covers_everything() -> None:
    config = BenchConfig(
        pipelines=("reference", "crash-on-chinese"),
        fixtures=("en_short", "zh_short"),
        voices=("slt", "rms"),
        repeats=2,
    )
    cells = build_matrix(config, load_fixtures())
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert [cell.pipeline for cell in cells[:4]] == ["reference", "crash-on-chinese"] * 2
    assert len({cell.key for cell in cells}) == len(cells)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"fixtures": ("en_shrot",)}, FixtureError, "did you mean"),
        ({"voices": ("stl",)}, FixtureError, "slt"),
        ({"pipelines": ("referense",)}, PipelineError, "Did you mean reference"),
        ({"modes": ("zero-shot",)}, BenchError, "modes are icl, xvector"),
        ({"repeats": 0}, BenchError, "at least 1"),
    ],
)
def test_bad_matrix_fails_before_anything_runs(
    tmp_path: Path, change: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        Bench.create(BenchConfig(**change), tmp_path)
    assert not any(tmp_path.iterdir()), "a refused run must leave no results directory behind"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"text": ""}, "empty or whitespace"),
        ({"text": "   \n\t "}, "empty or whitespace"),
        ({"text": "word " * 2000}, "5000-character limit"),
        ({"ref_text": " "}, "needs the reference transcript"),
        ({"ref_audio": np.zeros((1920, 2), np.float32)}, "1-D float32 mono"),
        ({"max_frames": 0}, "at least 1 frame"),
    ],
)
def test_bad_request_is_refused(change: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "text": "Hello.",
        "language": "english",
        "ref_audio": SILENCE,
        "ref_text": "Hi there.",
        "mode": CloneMode.ICL,
        "max_frames": 8,
        "seed": 0,
    }
    with pytest.raises(RequestError, match=message):
        Request(**{**fields, **change})  # type: ignore[arg-type]


def test_crashing_candidate_is_recorded_and_the_run_continues(tmp_path: Path) -> None:
    config = BenchConfig(
        pipelines=("crash-on-chinese",),
        fixtures=("en_short", "zh_short", "ja_short"),
        modes=("xvector",),
        repeats=1,
        warmup=0,
    )
    frame = Bench.create(config, tmp_path, "run").run(progress=False)
    by_fixture = frame.set_index("fixture_id")
    assert by_fixture.loc["zh_short", "status"] == "error"
    assert "segfault-like failure" in by_fixture.loc["zh_short", "error"]
    assert list(by_fixture.loc[["en_short", "ja_short"], "status"]) == ["ok", "ok"]
    assert by_fixture.loc["en_short", "audio_seconds"] == pytest.approx(0.32)
    assert len(load_run(tmp_path / "run")) == 3


def test_resume_refuses_changed_fixtures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from qtts_eval.fixtures import DEFAULT_FIXTURES_DIR, ENV_FIXTURES_DIR, write_manifest

    config = BenchConfig(
        pipelines=("crash-on-chinese",), fixtures=("en_short",), modes=("xvector",), repeats=1, warmup=0
    )
    Bench.create(config, tmp_path / "results", "run").run(progress=False)
    changed = tmp_path / "fixtures"
    shutil.copytree(DEFAULT_FIXTURES_DIR, changed)
    texts = json.loads((changed / "texts.json").read_text())
    texts[0]["text"] += " Changed."
    (changed / "texts.json").write_text(json.dumps(texts))
    write_manifest(changed)
    monkeypatch.setenv(ENV_FIXTURES_DIR, str(changed))
    with pytest.raises(BenchError, match="start a new run"):
        Bench.resume(tmp_path / "results" / "run")


def test_scoped_options_reach_only_their_pipeline() -> None:
    from qtts_eval.pipelines.calibration import Delays
    from qtts_eval.pipelines.reference import ReferenceOptions
    from qtts_eval.wire.pipelines import WebSocketOptions

    schemas = {"reference": ReferenceOptions, "websocket": WebSocketOptions, "calibration": Delays}
    options = {"timeout_s": 5, "reference.streaming": True, "websocket.url": "ws://127.0.0.1:1/api/v1/speak"}
    scoped = scope(options, schemas)
    assert scoped["reference"] == {"streaming": True}  # timeout_s is not a reference option
    assert scoped["websocket"] == {"timeout_s": 5, "url": "ws://127.0.0.1:1/api/v1/speak"}
    assert scoped["calibration"] == {}


def test_a_run_of_pipelines_with_options_scoped_to_each_runs(tmp_path: Path) -> None:
    from qtts_eval.pipelines.calibration import CalibrationPipeline

    pipelines.register("calibration-slow", CalibrationPipeline)
    config = BenchConfig(
        pipelines=("calibration", "calibration-slow"),
        fixtures=("en_short",),
        modes=("icl",),
        warmup=0,
        speaker_embedder=None,
        options={"calibration.chunks": 2, "calibration-slow.chunks": 3},
    )
    frame = Bench.create(config, tmp_path, "scoped").run(progress=False)
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    assert frame.set_index("pipeline")["chunks"].to_dict() == {"calibration": 2, "calibration-slow": 3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"streamin": True}, "Did you mean 'streaming'"),  # unscoped typo: no pipeline takes it
        ({"reference.left_contxt": 3}, "Did you mean 'left_context'"),  # scoped typo
        ({"refrence.streaming": True}, "Did you mean 'reference'"),  # scope names no pipeline of the run
        ({"reference.packet_frames": "four"}, "'four' is not an integer"),
        ({"reference.left_context": "all"}, "frame count or 'exact'"),
        ({"calibration.chunks": 0}, "at least 1"),
    ],
)
def test_misspelled_or_invalid_options_fail_before_anything_loads(
    options: dict[str, object], message: str
) -> None:
    config = BenchConfig(pipelines=("reference", "calibration"), fixtures=("en_short",), options=options)
    with pytest.raises(PipelineError, match=message):
        build_matrix(config, load_fixtures())


def test_quick_matrix_covers_every_category_and_mode_once() -> None:
    fixtures = load_fixtures()
    cells = build_matrix(BenchConfig(), fixtures)
    categories = {text.category for text in fixtures.texts.values()}
    assert {cell.text.category for cell in cells} == categories
    assert len(cells) == len(categories)  # one text per category, one voice, one repeat
    assert {cell.mode for cell in cells} == set(CloneMode)
    full = build_matrix(BenchConfig(matrix="full"), fixtures)
    assert len(full) == len(fixtures.texts) * len(CloneMode)


def test_records_carry_every_quality_column() -> None:
    import dataclasses

    from qtts_eval.metrics.quality import QUALITY_COLUMNS, quality_columns
    from qtts_eval.results import Record

    written = quality_columns(SILENCE, SILENCE, "Hello.", "english", synthetic=True, embedder=None)
    assert tuple(written) == QUALITY_COLUMNS
    assert set(QUALITY_COLUMNS) <= {field.name for field in dataclasses.fields(Record)}


def test_an_option_scoped_to_one_pipeline_loads_beside_another(tmp_path: Path) -> None:
    """`--option B.KEY` reaches B only, and loading A in the same run does not refuse it."""
    from qtts_eval.pipelines.calibration import CalibrationPipeline

    pipelines.register("calibration-b", CalibrationPipeline)
    config = BenchConfig(
        pipelines=("calibration", "calibration-b"),
        fixtures=("en_short",),
        modes=("xvector",),
        warmup=0,
        speaker_embedder=None,
        options={"calibration.first_chunk_ms": 5, "calibration-b.first_chunk_ms": 60, "chunks": 1},
    )
    frame = Bench.create(config, tmp_path, "run").run(progress=False)
    assert (frame["status"] == "ok").all(), frame["error"].tolist()
    first_byte = frame.set_index("pipeline")["first_byte_s"]
    assert first_byte["calibration-b"] >= 0.060 > first_byte["calibration"]
