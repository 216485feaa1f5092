"""Server dialects: the tiny reference served by `qtts-eval serve --dialect openai` and `--dialect speak` on
loopback, driven by each client (every openai streaming shape, both speak sample formats), and every planted
server fault named as an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from servers import running_server, serving_in_thread

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.dialects.openai import OpenAIPipeline
from qtts_eval.dialects.shared import NOT_AVAILABLE
from qtts_eval.dialects.speak import SpeakPipeline
from qtts_eval.dialects.speak_server import ERROR_FAULTS, serve_speak
from qtts_eval.errors import CandidateTimeout, MalformedMessage, ProtocolError, RemoteError
from qtts_eval.fixtures import load_fixtures, read_reference_audio
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request, UnsupportedRequest
from qtts_eval.pipelines.calibration import CalibrationPipeline
from qtts_eval.summary import summarise
from qtts_eval.units import SAMPLES_PER_FRAME
from qtts_eval.wire.client import collect
from qtts_eval.wire.protocol import Encoding, ErrorCode, decode_audio, encode_audio

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


def test_audio_past_the_frame_budget_is_named_in_every_shape(request_icl) -> None:
    """A server that ignores max_frames did other work: named, not recorded as a length-limited run."""
    for url in _serve("--fault", "over-budget"):
        for shape in ({"response_format": "pcm"}, {"response_format": "wav"}, {"stream_format": "sse"}):
            pipeline = _client(url, **shape)
            try:
                with pytest.raises(ProtocolError, match=f"more than a budget of {FRAMES} frames allows"):
                    collect(pipeline.stream(request_icl))
            finally:
                pipeline.close()


def test_headerless_pcm_at_another_documented_rate_is_named(served, request_icl) -> None:
    pipeline = _client(served, pcm_rate=16000)
    try:
        with pytest.raises(ProtocolError, match="sample rate 16000 Hz"):
            collect(pipeline.stream(request_icl))
    finally:
        pipeline.close()


# --- speak: /api/v1/speak -----------------------------------------------------------------------------------

SLOW_TONE = {"chunks": 10, "gap_ms": 50}  # a tone streamed over half a second: a cancel lands mid-utterance
TONE_FRAMES = 10 * 4  # its ten chunks of four frames
TONE_SAMPLES = TONE_FRAMES * SAMPLES_PER_FRAME
SPEAK_TIMEOUT_S = 2.0  # the planted hang's wait, twice per fault test: the tone server answers in ~1 ms


@pytest.fixture(scope="module")
def speak_served() -> Iterator[str]:
    yield from running_server([*QTTS, "serve", "--dialect", "speak", "--model", "tiny", "--port", "0"], "ws")


def _speak_client(url: str, **options: object) -> SpeakPipeline:
    pipeline = SpeakPipeline(PipelineConfig(options={"url": url, "mode_field": "mode", **options}))
    pipeline.load()
    return pipeline


@pytest.mark.parametrize("audio_format", ["pcm16", "f32"])
def test_speak_served_reference_equals_in_process_reference(
    speak_served, tiny_reference, request_icl, audio_format
) -> None:
    expected = np.concatenate([c.samples for c in collect(tiny_reference.stream(request_icl)).chunks])
    pipeline = _speak_client(speak_served, audio_format=audio_format)
    try:
        utterance = collect(pipeline.stream(request_icl))
    finally:
        pipeline.close()
    got = np.concatenate([c.samples for c in utterance.chunks])
    assert utterance.end.info["codes"] == NOT_AVAILABLE
    assert utterance.end.frames_generated == len(expected) // SAMPLES_PER_FRAME
    # f32 carries the reference's samples exactly; pcm16 rounds them to 16 bits.
    np.testing.assert_array_equal(got, expected if audio_format == "f32" else _pcm16(expected))


@contextlib.contextmanager
def _serving(fault: str | None = None, **delays: float) -> Iterator[str]:
    """`serve --dialect speak [--fault FAULT]` in a thread, serving the fast tone pipeline."""
    tone = CalibrationPipeline(PipelineConfig(options={"first_chunk_ms": 1, "gap_ms": 1, **delays}))
    tone.load()
    yield from serving_in_thread(functools.partial(serve_speak, tone, "127.0.0.1", 0, fault=fault))


@contextlib.contextmanager
def _speaking(url: str, request: Request) -> Iterator[Any]:
    """A raw connection with a speak sent and its first audio chunk received."""
    from websockets.sync.client import connect

    with connect(url, max_size=2**24) as connection:
        message = SpeakPipeline(PipelineConfig(options={"url": url})).message(request)
        connection.send(json.dumps(message))
        assert json.loads(connection.recv(timeout=TIMEOUT_S))["type"] == "audio_start"
        assert isinstance(connection.recv(timeout=TIMEOUT_S), bytes)  # the first audio chunk
        yield connection


def test_speak_cancel_ends_the_utterance_early_and_the_session_goes_on(request_icl) -> None:
    request = dataclasses.replace(request_icl, max_frames=TONE_FRAMES)
    with _serving(**SLOW_TONE) as url:
        with _speaking(url, request) as connection:
            connection.send(json.dumps({"type": "cancel"}))
            while isinstance(end := connection.recv(timeout=TIMEOUT_S), bytes):
                pass  # chunks already on their way
            ended = json.loads(end)
            assert ended["type"] == "audio_end" and ended["cancelled"] is True
            assert ended["samples"] < TONE_SAMPLES / 2
        # The client cancels when its consumer walks away, and the same connection serves the next request.
        pipeline = _speak_client(url)
        try:
            opened = pipeline.connection
            events = pipeline.stream(request)
            next(events)
            began = time.monotonic()
            events.close()
            assert pipeline.connection is opened and time.monotonic() - began < 0.25
            after = collect(pipeline.stream(request))
        finally:
            pipeline.close()
    assert sum(len(c.samples) for c in after.chunks) == TONE_SAMPLES and "cancelled" not in after.end.info


def test_speak_stop_ends_the_session(request_icl) -> None:
    from websockets.exceptions import ConnectionClosedOK

    request = dataclasses.replace(request_icl, max_frames=TONE_FRAMES)
    with _serving(**SLOW_TONE) as url, _speaking(url, request) as connection:
        connection.send(json.dumps({"type": "stop"}))
        received = []
        with pytest.raises(ConnectionClosedOK):
            while True:  # what was already sent, audio_end (cancelled), then the close
                received.append(connection.recv(timeout=TIMEOUT_S))
        ended = json.loads(received[-1])
        assert ended["type"] == "audio_end" and ended["cancelled"] is True and ended["samples"] < TONE_SAMPLES


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        *(
            (fault, UnsupportedRequest if code is ErrorCode.UNSUPPORTED else RemoteError, code.value)
            for fault, code in ERROR_FAULTS.items()
        ),
        ("cut-stream", ProtocolError, "closed before audio_end, after 7680 samples .*no close frame"),
        ("not-json", MalformedMessage, "malformed JSON control message"),
        ("wrong-format", MalformedMessage, "audio_start declares format 'mulaw'"),
        ("hang", CandidateTimeout, "nothing received within 2 s"),
        ("no-audio-end", ProtocolError, r"closed before audio_end, after 38400 samples .*received 1000"),
    ],
)
def test_speak_server_fault_is_a_named_error(request_icl, fault, error, message) -> None:
    with _serving(fault) as url:
        pipeline = _speak_client(url, timeout_s=SPEAK_TIMEOUT_S)
        try:
            for _ in range(2):  # the run goes on: the next request fails the same way, not worse
                with pytest.raises(error, match=message):
                    collect(pipeline.stream(dataclasses.replace(request_icl, max_frames=30)))
        finally:
            pipeline.close()


PLANTED = ("--fault", "error-tts-unavailable")


def test_speak_fault_is_planted_from_the_command_line(request_icl) -> None:
    for url in running_server(
        [*QTTS, "serve", "--dialect", "speak", "--pipeline", "calibration", "--port", "0", *PLANTED],
        "ws",
    ):
        pipeline = _speak_client(url, timeout_s=TIMEOUT_S)
        try:
            with pytest.raises(RemoteError, match=r"TTS_UNAVAILABLE: .*planted fault"):
                collect(pipeline.stream(request_icl))
        finally:
            pipeline.close()


OUTCOME_BUDGET = 21  # frames: the 20-frame tone fills it (20 >= 21 - 1), an 8-frame one ends before it


def test_bench_records_say_how_each_request_ended(tmp_path) -> None:
    """eos vs length_limited (two tones against one budget), and planted cancelled, timed_out and malformed
    servers: each record says how its request ended, and the summary counts each."""
    pipelines.register("tone-short", CalibrationPipeline)
    faults = {"speak-cancelled": "cancelled", "speak-hang": "hang", "speak-malformed": "not-json"}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(_serving(fault)) for name, fault in faults.items()}
        for name in faults:
            pipelines.register(name, SpeakPipeline)
        config = BenchConfig(
            pipelines=("calibration", "tone-short", *faults),
            fixtures=("en_short",),
            modes=("xvector",),
            warmup=0,
            max_frames=OUTCOME_BUDGET,
            speaker_embedder=None,
            asr=None,
            options={
                "first_chunk_ms": 1,
                "gap_ms": 1,
                "tone-short.chunks": 2,
                "timeout_s": SPEAK_TIMEOUT_S,
                **{f"{name}.url": url for name, url in urls.items()},
            },
        )
        frame = Bench.create(config, tmp_path, "outcomes").run(progress=False)
    assert frame.set_index("pipeline")["outcome"].to_dict() == {
        "calibration": "length_limited",
        "tone-short": "eos",
        "speak-cancelled": "cancelled",
        "speak-hang": "timed_out",
        "speak-malformed": "malformed",
    }, frame["error"].tolist()
    counts = summarise(frame, by=("pipeline",)).set_index("pipeline")
    assert counts.loc["speak-hang", ["errors", "timed_out", "eos"]].tolist() == [1, 1, 0]
    assert counts.loc["speak-cancelled", ["errors", "cancelled"]].tolist() == [0, 1]
