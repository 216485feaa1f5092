"""The one clock: runs one request and stamps every event when it reaches the harness.

The same code times every pipeline, in-process or over the wire, so reference and candidates are measured
alike. t0 is taken right before the request is handed to the pipeline; each event is stamped with
``time.monotonic_ns()`` as soon as the pipeline's iterator hands it over, before the harness does anything
else with it. A pipeline may also report its own times (``AudioChunk.t_ns``, ``Mark.t_ns``): they are kept
apart (the ``pipeline_*`` columns and the stage split) and must be consistent with the harness's clock,
never before t0, never after the event arrived, never out of order; otherwise the request is an error
naming the pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from qtts_eval.errors import ClockError, PipelineError
from qtts_eval.metrics.latency import ChunkTiming
from qtts_eval.metrics.memory import MemoryProbe, PeakMemory
from qtts_eval.pipelines.base import AudioChunk, Mark, Pipeline, Request, Stage, StreamEnd


@dataclass(frozen=True)
class Measurement:
    """What the harness observed for one request."""

    audio: np.ndarray  # all chunks, concatenated
    end: StreamEnd  # the pipeline's closing event
    chunks: list[ChunkTiming]  # harness arrival time and length of every chunk
    marks: dict[Stage, float]  # stage times, seconds after t0: the pipeline's own, or arrival if it gave none
    pipeline_chunk_t_s: list[float | None]  # the pipeline's own time for each chunk, seconds after t0
    wall_s: float  # t0 -> arrival of the last chunk
    memory: PeakMemory


def _own_time(name: str, what: str, t_ns: int | None, t0: int, arrived: int, after: int) -> float | None:
    """A pipeline-reported stamp, checked against the harness's clock; seconds after t0."""
    if t_ns is None:
        return None
    if t_ns < t0:
        raise ClockError(
            f"{name}: {what} stamped {(t0 - t_ns) / 1e6:.3f} ms before the request was handed over"
        )
    if t_ns > arrived:
        raise ClockError(
            f"{name}: {what} stamped {(t_ns - arrived) / 1e6:.3f} ms after it reached the harness"
        )
    if t_ns < after:
        raise ClockError(f"{name}: {what} stamped {(after - t_ns) / 1e6:.3f} ms before the previous event")
    return (t_ns - t0) / 1e9


def measure(pipeline: Pipeline, request: Request, name: str | None = None) -> Measurement:
    """Run one request through ``pipeline`` on the harness's clock; ``name`` (default: its label) names it
    in errors."""
    name = name or pipeline.label
    probe = MemoryProbe(pipeline.config.device)
    probe.start()
    audio: list[np.ndarray] = []
    chunks: list[ChunkTiming] = []
    own_chunks: list[float | None] = []
    marks: dict[Stage, float] = {}
    end: StreamEnd | None = None
    t0 = time.monotonic_ns()
    last_own = t0  # the pipeline's latest own stamp: its stamps must not go backwards
    for event in pipeline.stream(request):
        arrived = time.monotonic_ns()
        if end is not None:
            raise ClockError(f"{name}: an event arrived after the stream's end")
        if isinstance(event, AudioChunk):
            what = f"audio chunk {len(chunks)}"
            own = _own_time(name, what, event.t_ns, t0, arrived, last_own)
            audio.append(event.samples)
            chunks.append(ChunkTiming((arrived - t0) / 1e9, int(event.samples.shape[0])))
            own_chunks.append(own)
        elif isinstance(event, Mark):
            own = _own_time(name, f"mark {event.stage.value}", event.t_ns, t0, arrived, last_own)
            marks[event.stage] = own if own is not None else (arrived - t0) / 1e9
        else:
            end = event
            continue
        if event.t_ns is not None:
            last_own = event.t_ns
    memory = probe.stop()
    if end is None:
        raise ClockError(f"{name}: the stream ended without a StreamEnd event")
    if not any(chunk.samples for chunk in chunks):
        # Nothing to play: no latency, no audio to score. A success here would pass by omission.
        raise PipelineError(f"{name}: the stream ended without audio ({len(chunks)} empty chunks)")
    return Measurement(
        audio=np.concatenate(audio),
        end=end,
        chunks=chunks,
        marks=marks,
        pipeline_chunk_t_s=own_chunks,
        wall_s=chunks[-1].t_s,
        memory=memory,
    )
