"""A pipeline with known, injected delays, for calibrating the harness's own timing.

It emits a tone: a first chunk ``first_chunk_ms`` after the request is handed over, then one
chunk every ``gap_ms``. Whatever the harness measures beyond those delays is its own overhead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.base import (
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    AudioChunk,
    Event,
    Pipeline,
    PipelineConfig,
    Request,
    StreamEnd,
)

SPIN_MARGIN_NS = 2_000_000  # sleep until 2 ms before a deadline, then spin: sleep alone overshoots
TONE_HZ = 220.0  # an audible tone, so audible-onset equals first byte


@dataclass(frozen=True)
class Delays:
    first_chunk_ms: float = 100.0  # hand-off -> first chunk
    gap_ms: float = 20.0  # between consecutive chunks
    chunks: int = 5  # chunks per request
    chunk_frames: int = 4  # frames per chunk (1920 samples each)


def wait_until(deadline_ns: int) -> None:
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > SPIN_MARGIN_NS:
        time.sleep((remaining - SPIN_MARGIN_NS) / 1e9)
    while time.monotonic_ns() < deadline_ns:
        pass


class CalibrationPipeline(Pipeline):
    """Options: first_chunk_ms, gap_ms, chunks, chunk_frames (see Delays)."""

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        try:
            self.delays = Delays(**config.options)
        except TypeError as exc:
            raise PipelineError(
                f"calibration: {exc}; options are first_chunk_ms, gap_ms, chunks, chunk_frames"
            ) from None
        if self.delays.chunks < 1 or self.delays.chunk_frames < 1:
            raise PipelineError("calibration: chunks and chunk_frames must be at least 1")

    def load(self) -> None:
        samples = self.delays.chunk_frames * SAMPLES_PER_FRAME
        t = np.arange(samples) / SAMPLE_RATE_HZ
        self.chunk = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "synthetic": True, **self.delays.__dict__}

    def stream(self, request: Request) -> Iterator[Event]:
        start = time.monotonic_ns()
        for index in range(self.delays.chunks):
            wait_until(start + round((self.delays.first_chunk_ms + index * self.delays.gap_ms) * 1e6))
            yield AudioChunk(self.chunk, time.monotonic_ns())
        yield StreamEnd(frames_generated=self.delays.chunks * self.delays.chunk_frames)
