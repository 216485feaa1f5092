"""Server dialects: the tiny reference served by `qtts-eval serve --dialect openai` on loopback, driven by the
openai client in each streaming shape, and every planted server fault named as an error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from servers import running_server

from qtts_eval.dialects.openai import OpenAIPipeline
from qtts_eval.dialects.shared import NOT_AVAILABLE
from qtts_eval.errors import CandidateTimeout, ProtocolError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request
from qtts_eval.units import SAMPLES_PER_FRAME
from qtts_eval.wire.client import collect
from qtts_eval.wire.protocol import Encoding, decode_audio, encode_audio

QTTS = [sys.executable, "-m", "qtts_eval"]
FRAMES = 4  # a small frame budget keeps the tiny model fast on 2 cores
TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def request_icl() -> Request:
    voice = load_fixtures().voice("slt")
    audio, _ = read_reference_audio(voice.ref_wav)
    return Request(
        text="Hello over HTTP.",
        language="english",
        ref_audio=audio,
        ref_text=voice.ref_text,
        mode=CloneMode.ICL,
        max_frames=FRAMES,
        seed=0,
    )


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """What PCM16 on the wire makes of float samples (the one scale: qtts_eval.wire.protocol's)."""
    return decode_audio(encode_audio(samples, Encoding.PCM16), Encoding.PCM16)


def _serve(*extra: str) -> Iterator[str]:
    return running_server(
        [*QTTS, "serve", "--dialect", "openai", "--model", "tiny", "--port", "0", *extra], "http"
    )


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    yield from _serve()


def _client(url: str, **options: object) -> OpenAIPipeline:
    pipeline = OpenAIPipeline(PipelineConfig(options={"url": url, "mode_field": "mode", **options}))
    pipeline.load()
    return pipeline


@pytest.mark.parametrize(
    "shape",
    [
        {"response_format": "pcm"},
        {"response_format": "wav"},
        {"stream_format": "sse"},
    ],
    ids=["raw-pcm", "streamed-wav", "sse"],
)
def test_served_reference_equals_in_process_reference(served, tiny_reference, request_icl, shape) -> None:
    expected = np.concatenate([c.samples for c in collect(tiny_reference.stream(request_icl)).chunks])
    pipeline = _client(served, **shape)
    try:
        utterance = collect(pipeline.stream(request_icl))
    finally:
        pipeline.close()
    got = np.concatenate([c.samples for c in utterance.chunks])
    assert utterance.end.info["codes"] == NOT_AVAILABLE
    assert utterance.end.frames_generated == len(expected) // SAMPLES_PER_FRAME
    # The wire is PCM16: the served audio equals the in-process reference's, rounded to 16 bits.
    np.testing.assert_array_equal(got, _pcm16(expected))


@pytest.mark.parametrize(
    ("fault", "shape", "error", "message"),
    [
        ("http-500-json", {}, ProtocolError, "HTTP 500: .*planted fault: internal error"),
        ("http-400-text", {}, ProtocolError, "HTTP 400: planted fault: bad request"),
        ("wrong-content-type", {}, ProtocolError, "content type 'text/html'"),
        ("rate-16k", {"response_format": "wav"}, ProtocolError, "sample rate 16000 Hz"),
        ("wav-lying-length", {"response_format": "wav"}, ProtocolError, "header declares 1000000 data bytes"),
        ("cut-mid-chunk", {}, ProtocolError, "broke off|mid-sample"),
        ("sse-not-json", {"stream_format": "sse"}, ProtocolError, "SSE event is not JSON: 'not json'"),
        ("hang", {}, CandidateTimeout, "nothing received within 3 s"),
    ],
)
def test_server_fault_is_a_named_error(request_icl, fault, shape, error, message) -> None:
    for url in _serve("--fault", fault):
        pipeline = _client(url, timeout_s=TIMEOUT_S, **shape)
        began = time.monotonic()
        try:
            with pytest.raises(error, match=message):
                collect(pipeline.stream(request_icl))
        finally:
            pipeline.close()
        assert time.monotonic() - began < TIMEOUT_S + 5


def test_headerless_pcm_at_another_documented_rate_is_named(served, request_icl) -> None:
    pipeline = _client(served, pcm_rate=16000)
    try:
        with pytest.raises(ProtocolError, match="sample rate 16000 Hz"):
            collect(pipeline.stream(request_icl))
    finally:
        pipeline.close()
