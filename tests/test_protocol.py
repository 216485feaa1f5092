"""Wire protocol building blocks: audio encodings, stdio framing and message validation."""

from __future__ import annotations

import io

import numpy as np
import pytest

from qtts_eval.errors import ProtocolError
from qtts_eval.pipelines.base import CloneMode
from qtts_eval.wire import protocol
from qtts_eval.wire.protocol import Encoding, ErrorCode, InvalidMessage

VOICE = (np.linspace(-0.5, 0.5, 24_000, dtype=np.float32), "A transcript.")


def test_f32_round_trip_is_bit_exact() -> None:
    samples = np.random.default_rng(0).uniform(-1, 1, 1920).astype(np.float32)
    decoded = protocol.decode_audio(protocol.encode_audio(samples, Encoding.F32), Encoding.F32)
    assert decoded.tobytes() == samples.tobytes()


def test_pcm16_round_trip_is_within_half_a_step() -> None:
    samples = np.random.default_rng(0).uniform(-1, 1, 1920).astype(np.float32)
    decoded = protocol.decode_audio(protocol.encode_audio(samples, Encoding.PCM16), Encoding.PCM16)
    assert np.max(np.abs(decoded - samples)) <= 0.5 / 32767 + 1e-7


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty audio frame"),
        (b"\x00\x00\x80", "not a whole number"),
        (np.array([0.1, np.nan], "<f4").tobytes(), "NaN or infinite"),
    ],
)
def test_bad_audio_frames_are_named(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode_audio(data, Encoding.F32)


def test_stdio_frames_round_trip_and_bad_kind_is_refused() -> None:
    stream = io.BytesIO(protocol.json_frame({"type": "stop"}) + protocol.frame(protocol.KIND_AUDIO, b"abcd"))
    assert protocol.loads(protocol.read_frame(stream) or "") == {"type": "stop"}
    assert protocol.read_frame(stream) == b"abcd"
    assert protocol.read_frame(stream) is None
    with pytest.raises(ProtocolError, match="unknown kind byte 0x09"):
        protocol.read_frame(io.BytesIO(protocol.frame(0x09, b"x")))
    with pytest.raises(ProtocolError, match="closed mid-frame"):
        protocol.read_frame(io.BytesIO(protocol.frame(protocol.KIND_AUDIO, b"abcd")[:-1]))


def test_start_carries_the_voice_exactly() -> None:
    encoding, voice, wanted = protocol.parse_start(protocol.start_message(Encoding.PCM16, voice=VOICE))
    assert encoding is Encoding.PCM16 and wanted is None and voice is not None
    assert voice[0].tobytes() == VOICE[0].tobytes() and voice[1] == VOICE[1]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"protocol": 2}, ErrorCode.UNSUPPORTED_PROTOCOL),
        ({"encoding": "mp3"}, ErrorCode.INVALID_REQUEST),
        ({"sample_rate": 16_000}, ErrorCode.INVALID_REQUEST),
        ({"voice": {"audio": "%%%", "text": "x"}}, ErrorCode.INVALID_REQUEST),
    ],
)
def test_bad_start_gets_a_coded_refusal(changes: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(InvalidMessage) as caught:
        protocol.parse_start({**protocol.start_message(Encoding.F32, voice=VOICE), **changes})
    assert caught.value.code is code


def test_speak_round_trips_every_request_field() -> None:
    from qtts_eval.pipelines.base import Request, Sampling

    request = Request(
        text="Hi there.",
        language="english",
        ref_audio=VOICE[0],
        ref_text=VOICE[1],
        mode=CloneMode.XVECTOR,
        max_frames=7,
        seed=42,
        sampling=Sampling(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.0),
    )
    parsed = protocol.parse_speak(protocol.speak_message(request, return_codes=True), VOICE)
    assert parsed == request


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"text": " "}, ErrorCode.INVALID_REQUEST),
        ({"max_frames": 0}, ErrorCode.INVALID_REQUEST),
        ({"max_frames": True}, ErrorCode.INVALID_REQUEST),
        ({"mode": "zero-shot"}, ErrorCode.INVALID_REQUEST),
        ({"forced_codes": [[0] * 16]}, ErrorCode.UNSUPPORTED),
    ],
)
def test_bad_speak_gets_a_coded_refusal(changes: dict[str, object], code: ErrorCode) -> None:
    message = {"type": "speak", "text": "Hello.", "max_frames": 4, **changes}
    with pytest.raises(InvalidMessage) as caught:
        protocol.parse_speak(message, VOICE)
    assert caught.value.code is code
