"""Wire protocol building blocks: audio encodings, stdio framing and message validation."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from qtts_eval.errors import ProtocolError
from qtts_eval.pipelines.base import Capability, CloneMode, ForcedInput, ForcedInputs, Request
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
    from qtts_eval.pipelines.base import Sampling

    request = Request(
        text="Hi there.",
        language="english",
        ref_audio=VOICE[0],
        ref_text=VOICE[1],
        mode=CloneMode.XVECTOR,
        max_frames=7,
        seed=42,
        sampling=Sampling(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.0),
        non_streaming_mode=True,
    )
    parsed = protocol.parse_speak(protocol.speak_message(request, return_codes=True), VOICE, frozenset())
    assert parsed.request == request and parsed.return_codes
    assert parsed.dump_path is None and parsed.forced is None
    own_layout = dataclasses.replace(request, non_streaming_mode=None)  # no layout asked: the field is absent
    message = protocol.speak_message(own_layout, return_codes=False)
    assert "non_streaming_mode" not in message
    assert protocol.parse_speak(message, VOICE, frozenset()).request.non_streaming_mode is None


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"text": " "}, ErrorCode.INVALID_REQUEST),
        ({"max_frames": 0}, ErrorCode.INVALID_REQUEST),
        ({"max_frames": True}, ErrorCode.INVALID_REQUEST),
        ({"mode": "zero-shot"}, ErrorCode.INVALID_REQUEST),
        ({"non_streaming_mode": "yes"}, ErrorCode.INVALID_REQUEST),
        ({"non_streaming_mode": 1}, ErrorCode.INVALID_REQUEST),
        ({"forced_codes": [[0] * 16]}, ErrorCode.UNSUPPORTED),
        ({"dump_path": "a.safetensors"}, ErrorCode.UNSUPPORTED),
    ],
)
def test_bad_speak_gets_a_coded_refusal(changes: dict[str, object], code: ErrorCode) -> None:
    message = {"type": "speak", "text": "Hello.", "max_frames": 4, **changes}
    with pytest.raises(InvalidMessage) as caught:
        protocol.parse_speak(message, VOICE, frozenset())
    assert caught.value.code is code


PARITY = frozenset({Capability.STAGE_DUMPS, Capability.FORCED_CODES})


def _parity_request(mode: CloneMode = CloneMode.ICL) -> Request:
    return Request(
        text="Hi.", language="english", ref_audio=VOICE[0], ref_text=VOICE[1], mode=mode, max_frames=4, seed=0
    )


def test_parity_speak_round_trips_forced_inputs_exactly() -> None:
    rng = np.random.default_rng(0)
    forced = ForcedInputs(
        codes=rng.integers(0, 2048, (3, 16)),
        ref_codes=rng.integers(0, 2048, (5, 16)),
        spk_embedding=rng.standard_normal(64).astype(np.float32),
    )
    message = protocol.speak_message(
        _parity_request(), False, forced=forced, dump_path="run/a.free.safetensors"
    )
    parsed = protocol.parse_speak(json.loads(protocol.dumps(message)), VOICE, PARITY)
    assert str(parsed.dump_path) == "run/a.free.safetensors"
    assert parsed.forced is not None
    assert np.array_equal(parsed.forced.codes, forced.codes)
    assert parsed.forced.ref_codes is not None and np.array_equal(parsed.forced.ref_codes, forced.ref_codes)
    assert parsed.forced.spk_embedding is not None and forced.spk_embedding is not None
    assert parsed.forced.spk_embedding.tobytes() == forced.spk_embedding.tobytes()  # f32, bit-exact


def test_partial_forcing_sends_only_the_forced_inputs() -> None:
    forced = ForcedInputs(codes=None, ref_codes=None, spk_embedding=np.ones(8, np.float32))
    message = protocol.speak_message(_parity_request(), False, forced=forced, dump_path="a.safetensors")
    assert "forced_codes" not in message and "forced_ref_codes" not in message
    parsed = protocol.parse_speak(json.loads(protocol.dumps(message)), VOICE, PARITY)
    assert parsed.forced is not None and parsed.forced.forced == (ForcedInput.SPK_EMBEDDING,)
    # A server without forced_codes refuses any forced input, not only forced_codes.
    with pytest.raises(InvalidMessage, match="forced_spk_embedding needs the forced_codes capability"):
        protocol.parse_speak(message, VOICE, frozenset({Capability.STAGE_DUMPS}))


@pytest.mark.parametrize(
    ("dump_path", "problem"),
    [
        ("/etc/x.safetensors", "relative"),
        ("../x.safetensors", "'..'"),
        ("a/../../x.safetensors", "'..'"),
        ("a//x.safetensors", "'//'"),
        ("a/b/c/d/e.safetensors", "deeper"),
        ("x.bin", "must end in .safetensors"),
        ("x" * 300 + ".safetensors", "character limit"),
        ("C:/x.safetensors", "relative"),
        (7, "non-empty string"),
    ],
)
def test_dump_path_outside_the_dump_directory_is_refused(dump_path: object, problem: str) -> None:
    message = {**protocol.speak_message(_parity_request(), False), "dump_path": dump_path}
    with pytest.raises(InvalidMessage, match=problem) as caught:
        protocol.parse_speak(message, VOICE, PARITY)
    assert caught.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"forced_codes": [[0] * 16] * 5}, "1 to 4 frames"),  # more frames than the budget
        ({"forced_codes": [[0] * 15]}, "expected \\[frames, 16\\]"),
        ({"forced_codes": [[-1] * 16]}, "outside"),
        ({"forced_spk_embedding": "A" * 50_000}, "at most 8192"),
        ({"dump_path": None}, "only make sense in a parity request"),
    ],
)
def test_forced_inputs_are_bounded(changes: dict[str, object], problem: str) -> None:
    forced = ForcedInputs(np.zeros((2, 16), np.int64), np.zeros((2, 16), np.int64), np.ones(8, np.float32))
    message = {
        **protocol.speak_message(_parity_request(), False, forced=forced, dump_path="x.safetensors"),
        **changes,
    }
    with pytest.raises(InvalidMessage, match=problem):
        protocol.parse_speak(message, VOICE, PARITY)
