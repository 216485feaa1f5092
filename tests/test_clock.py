"""The one clock: the harness stamps every event, and refuses pipelines whose own stamps contradict it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.errors import ClockError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.measure import measure
from qtts_eval.pipelines.base import (
    AudioChunk,
    CloneMode,
    Event,
    Mark,
    Pipeline,
    PipelineConfig,
    Request,
    Stage,
    StreamEnd,
)

CHUNK = np.full(1920, 0.1, np.float32)
DELAY_S = 0.03


class Stamping(Pipeline):
    """Sleeps DELAY_S, then sends two chunks whose own stamps follow ``self.stamping``."""

    label = "stamping"
    stamping = "honest"

    def load(self) -> None:
        pass

    def stream(self, request: Request) -> Iterator[Event]:
        time.sleep(DELAY_S)
        now = time.monotonic_ns()
        first, second = {
            "honest": (now, now + 1),
            "none": (None, None),
            "early": (now - 10**9, now),  # claims a time before the request was handed over
            "late": (now + 10**9, now + 10**9),  # claims a time after the harness received it
            "out_of_order": (now, now - 1000),
        }[self.stamping]
        if self.stamping == "honest":
            yield Mark(Stage.FIRST_FRAME, now - 1)
        yield AudioChunk(CHUNK, first)
        time.sleep(DELAY_S)
        yield AudioChunk(CHUNK, second)
        yield StreamEnd(frames_generated=2)


def _request() -> Request:
    return Request.for_voice(load_fixtures().voice("slt"), "Hello.", "english", CloneMode.XVECTOR, 8, 0)


def _pipeline(stamping: str) -> Stamping:
    pipeline = Stamping(PipelineConfig())
    pipeline.stamping = stamping
    return pipeline


@pytest.mark.parametrize("stamping", ["honest", "none"])
def test_the_harness_stamps_arrival_whatever_the_pipeline_reports(stamping: str) -> None:
    result = measure(_pipeline(stamping), _request())
    first, second = result.chunks
    assert DELAY_S <= first.t_s < DELAY_S + 0.02
    assert second.t_s - first.t_s >= DELAY_S  # arrival, not the pipeline's "now + 1 ns"
    own = result.pipeline_chunk_t_s
    if stamping == "none":
        assert own == [None, None]
    else:
        assert own[0] is not None and own[0] <= first.t_s  # its own time is kept apart, and not later
        assert result.marks[Stage.FIRST_FRAME] <= own[0]


@pytest.mark.parametrize(
    ("stamping", "message"),
    [
        ("early", "stamping: audio chunk 0 stamped .* before the request was handed over"),
        ("late", "stamping: audio chunk 0 stamped .* after it reached the harness"),
        ("out_of_order", "stamping: audio chunk 1 stamped .* before the previous event"),
    ],
)
def test_stamps_before_t0_after_arrival_or_out_of_order_are_errors(stamping: str, message: str) -> None:
    with pytest.raises(ClockError, match=message):
        measure(_pipeline(stamping), _request())


def test_a_bench_records_a_lying_clock_as_an_error_naming_the_pipeline(tmp_path: Path) -> None:
    class Early(Stamping):
        stamping = "early"

    pipelines.register("early-stamps", Early)
    config = BenchConfig(pipelines=("early-stamps",), fixtures=("en_short",), modes=("xvector",), warmup=0)
    frame = Bench.create(config, tmp_path, "run").run(progress=False)
    assert frame["status"].tolist() == ["error"]
    assert frame["error"].iloc[0].startswith("ClockError: early-stamps: audio chunk 0 stamped")


def test_calibration_first_byte_through_the_full_bench_path(tmp_path: Path) -> None:
    """The injected 80 ms is measured within 0.5 ms by the harness's own stamps (thread hand-off included)."""
    config = BenchConfig(
        pipelines=("calibration",),
        fixtures=("en_short",),
        modes=("xvector",),
        repeats=20,
        speaker_embedder=None,
        options={"first_chunk_ms": 80, "gap_ms": 5, "chunks": 3},
    )
    frame = Bench.create(config, tmp_path, "run").run(progress=False)
    assert (frame["status"] == "ok").all()
    overhead_ms = (frame["first_byte_s"] - 0.080) * 1e3
    assert (overhead_ms >= 0).all()  # nothing arrives before it was produced
    assert float(overhead_ms.median()) < 0.5
    assert (frame["handoff_s"] >= 0).all()  # the calibration pipeline's own stamp precedes the harness's
