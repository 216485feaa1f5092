"""Latency of one request from the chunk arrival times seen at the harness (definitions: docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qtts_eval.metrics.audio import audible_onset_s
from qtts_eval.pipelines.base import Stage
from qtts_eval.units import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

PLAYABLE_FRAMES = 4  # one packet: 320 ms of audio, the paper's streaming packet


@dataclass(frozen=True)
class ChunkTiming:
    """One chunk as it arrived: seconds after t0, and its length."""

    t_s: float  # arrival at the harness, seconds after t0
    samples: int  # samples in the chunk


# A request whose audio arrives within the last 10 % of its time after t0 (first to last byte, over t0 to
# last byte) came in one burst at the end: a server that buffers the whole utterance, not a stream. A
# streaming server spreads its frames over generation; only a first frame far slower than all the rest
# together would come close.
NOT_STREAMING_SHARE = 0.1


def in_one_burst(first: float, last: float) -> bool:
    """Whether audio whose first and last bytes arrived at `first` and `last` (any unit, from t0) came in one
    burst at the end (NOT_STREAMING_SHARE): the one rule bench's delivery and load's `buffered` share."""
    return last - first < NOT_STREAMING_SHARE * last


def _arrival_of_sample(chunks: Sequence[ChunkTiming], sample: int) -> float | None:
    """When the chunk holding ``sample`` arrived."""
    total = 0
    for chunk in chunks:
        total += chunk.samples
        if total > sample:
            return chunk.t_s
    return None


def playback_underruns(chunks: Sequence[ChunkTiming]) -> tuple[int, float]:
    """Simulate a player that starts at first byte and plays at 24 kHz: (stall count, total stall seconds)."""
    if not chunks:
        return 0, 0.0
    playing_until = chunks[0].t_s
    stalls, stalled = 0, 0.0
    for chunk in chunks:
        if chunk.t_s > playing_until:
            if chunk is not chunks[0]:
                stalls += 1
                stalled += chunk.t_s - playing_until
            playing_until = chunk.t_s
        playing_until += chunk.samples / SAMPLE_RATE_HZ
    return stalls, stalled


def latency_columns(
    chunks: Sequence[ChunkTiming],
    marks: dict[Stage, float],
    audio: np.ndarray,
    pipeline_chunk_t_s: Sequence[float | None] = (),
) -> dict[str, float | int | list[float] | list[int] | None]:
    """Record columns for one request. ``chunks`` carry the harness's arrival stamps; ``marks`` (stage times)
    and ``pipeline_chunk_t_s`` are the pipeline's own times; all in seconds after t0."""
    if not chunks:
        return {}
    own_first = pipeline_chunk_t_s[0] if pipeline_chunk_t_s else None
    first_byte = chunks[0].t_s
    playable = min(PLAYABLE_FRAMES * SAMPLES_PER_FRAME, int(audio.size))
    onset_s = audible_onset_s(audio)
    onset = round(onset_s * SAMPLE_RATE_HZ) if onset_s is not None else None
    gaps = np.diff([chunk.t_s for chunk in chunks])
    stalls, stalled = playback_underruns(chunks)

    def split(later: float | None, earlier: float | None) -> float | None:
        return later - earlier if later is not None and earlier is not None else None

    prompt = marks.get(Stage.PROMPT_READY)
    prefill = marks.get(Stage.PREFILL_DONE)
    first_frame = marks.get(Stage.FIRST_FRAME)
    packet_codes = marks.get(Stage.FIRST_PACKET_CODES)
    return {
        "first_byte_s": first_byte,
        "first_playable_s": _arrival_of_sample(chunks, max(playable - 1, 0)),
        "audible_onset_s": _arrival_of_sample(chunks, onset) if onset is not None else None,
        "prompt_s": prompt,
        "prefill_s": split(prefill, prompt),
        "first_frame_s": split(first_frame, prefill),
        # Both ends on the pipeline's own clock: the decode itself, without the hand-off to the harness.
        "first_packet_decode_s": split(own_first, packet_codes),
        "pipeline_first_byte_s": own_first,
        "handoff_s": split(first_byte, own_first),
        "chunks": len(chunks),
        "gap_p50_s": float(np.percentile(gaps, 50)) if gaps.size else None,
        "gap_p95_s": float(np.percentile(gaps, 95)) if gaps.size else None,
        "gap_max_s": float(gaps.max()) if gaps.size else None,
        "underruns": stalls,
        "underrun_s": stalled,
        "chunk_t_s": [chunk.t_s for chunk in chunks],
        "chunk_samples": [chunk.samples for chunk in chunks],
    }
