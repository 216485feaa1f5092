"""A pipeline with known, injected delays, for calibrating the harness's own timing.

It emits a tone: a first chunk ``first_chunk_ms`` after the request is handed over, then one chunk every
``gap_ms``. The chunks are produced in a worker thread and handed over through a queue, as the streaming
reference does, so whatever the harness measures beyond those delays is the overhead every in-process
pipeline pays: thread hand-off plus the harness's own stamping.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.pipelines.base import (
    AudioChunk,
    Delivery,
    Emit,
    Event,
    Pipeline,
    Request,
    StreamEnd,
    WorkDeclaration,
    produce,
)
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, TONE_HZ, TONE_LEVEL

SPIN_MARGIN_NS = 2_000_000  # sleep until 2 ms before a deadline, then spin: sleep alone overshoots


def tone(samples: int, start_sample: int = 0) -> npt.NDArray[np.float32]:
    """The suite's test tone (TONE_HZ at TONE_LEVEL), from ``start_sample`` on, so chunks join seamlessly."""
    t = (np.arange(samples) + start_sample) / SAMPLE_RATE_HZ
    return (TONE_LEVEL * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@dataclass(frozen=True)
class Delays:
    """The calibration pipeline's options."""

    first_chunk_ms: float = 100.0  # hand-off -> first chunk
    gap_ms: float = 20.0  # between consecutive chunks
    chunks: int = 5  # chunks per request
    chunk_frames: int = 4  # frames per chunk (1920 samples each)

    def __post_init__(self) -> None:
        if self.chunks < 1 or self.chunk_frames < 1:
            raise ValueError("chunks and chunk_frames must be at least 1")
        if self.first_chunk_ms < 0 or self.gap_ms < 0:
            raise ValueError("first_chunk_ms and gap_ms must not be negative")


def wait_until(deadline_ns: int) -> None:
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > SPIN_MARGIN_NS:
        time.sleep((remaining - SPIN_MARGIN_NS) / 1e9)
    while time.monotonic_ns() < deadline_ns:
        pass


class CalibrationPipeline(Pipeline):
    """Options: see Delays."""

    label = "calibration"
    options_schema = Delays
    options: Delays

    def load(self) -> None:
        self.chunk = tone(self.options.chunk_frames * SAMPLES_PER_FRAME)  # audible: onset equals first byte

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "synthetic": True, **dataclasses.asdict(self.options)}

    def work(self) -> WorkDeclaration:
        # A tone from memory: no prompt, no codes to observe, no compute threads of its own.
        delays = self.options
        return WorkDeclaration(
            delivery=Delivery.STREAMED if delays.chunks > 1 else Delivery.WHOLE,
            packet_frames=delays.chunk_frames if delays.chunks > 1 else None,
            instrumentation="none",
        )

    def stream(self, request: Request) -> Iterator[Event]:
        start = time.monotonic_ns()
        delays = self.options

        def work(emit: Emit, cancelled: threading.Event) -> None:
            for index in range(delays.chunks):
                if cancelled.is_set():
                    return
                wait_until(start + round((delays.first_chunk_ms + index * delays.gap_ms) * 1e6))
                emit(AudioChunk(self.chunk, time.monotonic_ns()))
            emit(StreamEnd(frames_generated=delays.chunks * delays.chunk_frames))

        return produce(work, name="qtts-eval-calibration")
