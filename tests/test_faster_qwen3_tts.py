"""The faster-qwen3-tts adapter's frame logic, without the port: whole frames out, its own frame count."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from qtts_eval.candidates.faster_qwen3_tts import (
    FasterQwen3TtsPipeline,
    WholeFrames,
    reported_frames,
)
from qtts_eval.errors import PipelineError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.pipelines.base import AudioChunk, CloneMode, PipelineConfig, Request, StreamEnd
from qtts_eval.units import SAMPLES_PER_FRAME

# What the port's streaming generator yields for 14 frames in chunks of 4: it cuts each re-decode at
# round(context frames x samples per frame), measured on its first decode, so chunks miss or gain samples.
PORT_CHUNKS = [(4, 7679), (4, 7681), (4, 7680), (2, 3839)]


class ReplayedPort:
    """Stands in for the loaded port: replays PORT_CHUNKS as its generator would (audio, rate, timing)."""

    def generate_voice_clone_streaming(self, **_kwargs: object) -> Iterator[tuple[np.ndarray, int, dict]]:
        for index, (steps, samples) in enumerate(PORT_CHUNKS):
            audio = np.full(samples, 0.1 * (index + 1), dtype=np.float32)
            yield audio, 24000, {"chunk_index": index, "chunk_steps": steps, "is_final": index == 3}


def test_whole_frames_out_of_any_chunking_and_the_ports_frame_count() -> None:
    regroup = WholeFrames()
    sent = [regroup.push(np.ones(samples, np.float32)) for _, samples in PORT_CHUNKS]
    tail = regroup.finish(14)
    sizes = [chunk.size for chunk in [*sent, tail] if chunk is not None]
    assert all(size % SAMPLES_PER_FRAME == 0 for size in sizes)
    assert sum(sizes) == 14 * SAMPLES_PER_FRAME
    assert regroup.received == sum(samples for _, samples in PORT_CHUNKS) == 14 * SAMPLES_PER_FRAME - 1


def test_finish_pads_a_short_tail_with_silence_and_refuses_frames_beyond_the_count() -> None:
    regroup = WholeFrames()
    assert regroup.push(np.ones(SAMPLES_PER_FRAME + 100, np.float32)).size == SAMPLES_PER_FRAME
    tail = regroup.finish(2)
    assert tail.size == SAMPLES_PER_FRAME and tail[:100].all() and not tail[100:].any()
    over = WholeFrames()
    over.push(np.ones(3 * SAMPLES_PER_FRAME, np.float32))
    with pytest.raises(PipelineError, match="3 whole frames of audio but reported 2"):
        over.finish(2)


def test_a_chunk_without_its_step_count_is_an_error_naming_the_keys() -> None:
    assert reported_frames({"chunk_steps": 4}) == 4
    with pytest.raises(PipelineError, match=r"no 'chunk_steps'.*\['chunk_index'\]"):
        reported_frames({"chunk_index": 0})


def test_the_adapter_streams_whole_frames_and_reports_the_ports_count() -> None:
    pipeline = FasterQwen3TtsPipeline(PipelineConfig(model="tiny", options={"checkpoint": "/unused"}))
    pipeline.model = ReplayedPort()  # what load() would set: the port itself, here its replayed chunks
    voice = load_fixtures().voice("slt")
    request = Request.for_voice(voice, "Hello.", "english", CloneMode.XVECTOR, max_frames=15, seed=0)
    events = list(pipeline.stream(request))
    chunks = [event for event in events if isinstance(event, AudioChunk)]
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.frames_generated == 14
    assert all(chunk.samples.size % SAMPLES_PER_FRAME == 0 for chunk in chunks)
    assert sum(chunk.samples.size for chunk in chunks) == 14 * SAMPLES_PER_FRAME
    assert end.info["port_samples_over_frames"] == -1
